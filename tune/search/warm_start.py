"""`--warm-start`: seed a new study's TPE with the finished trials of an earlier one."""

from __future__ import annotations

from pathlib import Path

import optuna

from mf.errors import ConfigError
from search_spaces import SearchSpace
from tune.record.keys import RAY_TRIAL_ID, WARM_START_FROM
from tune.record.study import JOURNAL_FILE, exists, is_url, open_storage, study_location


def warm_start_trials(source: str, space: SearchSpace) -> list[optuna.trial.FrozenTrial]:
    """The COMPLETE and PRUNED trials of an earlier study (an experiment folder, a journal file or a
    storage URL, `#name` naming the study where it holds several) whose params fit `space`, as
    new trials to add to a study, each marked with where it came from."""
    where, _, study_name = source.partition("#")
    location = where if is_url(where) or Path(where).is_file() else study_location(Path(where).resolve())
    if not exists(location):
        raise ConfigError(
            f"--warm-start: {where!r} holds no Optuna study (no {JOURNAL_FILE}); give an "
            "experiment folder, a journal file or a storage URL"
        )
    storage = open_storage(location)
    if not study_name:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        if len(names) != 1:
            raise ConfigError(
                f"--warm-start: {where!r} holds studies {', '.join(names) or 'none'}; name one as {where}#name"
            )
        study_name = names[0]
    old = optuna.load_study(study_name=study_name, storage=storage)
    distributions = space.to_optuna()
    keep = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return [
        optuna.trial.create_trial(
            state=t.state,
            value=t.value,
            params=t.params,
            distributions=distributions,
            intermediate_values=t.intermediate_values,
            user_attrs={
                **{k: v for k, v in t.user_attrs.items() if k != RAY_TRIAL_ID},  # not a trial of this run
                WARM_START_FROM: f"{where}#{study_name}:{t.number}",
            },
        )
        for t in old.get_trials(deepcopy=False, states=keep)
        if space.contains(t.params)
    ]
