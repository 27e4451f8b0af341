"""Ray Tune's searcher interface over an Optuna study: TPE proposes each trial, the study hears the truth.

Ray's own `OptunaSearch` steps intermediate values by `training_iteration` (which restarts on a
restore), never reports the result ASHA stopped a trial on, and tells a stopped trial COMPLETE with
its last low-budget value, so TPE compares 2-epoch and 30-epoch values as equals. This searcher is
written on Tune's public `Searcher` interface and Optuna's ask-and-tell: every epoch is reported at
step `epoch`, and each trial is told as `tune.record.outcome` says (PRUNED, COMPLETE with its best value,
FAIL). The study lives in durable storage (tune.record.study) and is the searcher's whole state: a
resumed driver reopens it, and what the searcher saves with Tune's snapshots is only the Tune trials
it had proposed for, so that it can tell which RUNNING trials the snapshot never knew.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState
from ray.tune.search import Searcher

from mf.atomic import write_json
from tune._internals.optuna import live_trial
from tune.record.keys import (
    BEST_VAL_NDCG,
    DIVERGED,
    EPOCH,
    METRIC,
    MODE,
    RANKING_METRIC,
    RAY_TRIAL_ID,
    WARM_START_FROM,
)
from tune.record.outcome import outcome_of_curve
from tune.record.study import open_storage
from tune.settings import trial_epochs


def make_sampler(seed: int, *, n_startup_trials: int = 10) -> optuna.samplers.TPESampler:
    """The TPE sampler of every study: seeded, with `n_startup_trials` random proposals first."""
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials)


class StudySearcher(Searcher):
    """Proposes trials with Optuna's TPE from the study `study_name` at `study_location`.

    The study must exist (tune.search.experiment creates it). A trial is told PRUNED, COMPLETE or FAIL by
    `tune.record.outcome.outcome_of_curve`; with `num_samples` > 0, no more than that many trials of this
    experiment are ever proposed, however often the driver restarts.
    """

    def __init__(
        self,
        *,
        space: dict[str, optuna.distributions.BaseDistribution],
        study_location: str,
        study_name: str,
        seed: int,
        max_epochs: int,
        num_samples: int = -1,
        n_startup_trials: int = 10,
        metric: str = METRIC,
        mode: str = MODE,
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        self._space = dict(space)
        self._location, self._name = study_location, study_name
        self._seed, self._n_startup_trials = seed, n_startup_trials
        self._max_epochs, self._num_samples = max_epochs, num_samples
        self._max_concurrent = 0
        self._suggested: set[str] = set()  # every Tune trial this searcher proposed for
        self._forget_study()

    # ------------------------------------------------------------ the study
    def _forget_study(self) -> None:
        self._study: optuna.Study | None = None
        self._live: dict[str, optuna.Trial] = {}  # Tune trial id -> its running Optuna trial
        self._curves: dict[str, dict[int, float]] = {}  # what was reported for each live trial
        self._best_ranking: dict[str, float] = {}  # each live trial's best RANKING_METRIC so far
        self._orphans: list[optuna.trial.FrozenTrial] = []
        self._asks_left: int | None = None

    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            self._open(known=None)
        return self._study

    def _open(self, *, known: set[str] | None) -> None:
        """Open the study and pick up its RUNNING trials: those of Tune trials in `known` (None: any)
        go on as live trials; the others are proposals a killed driver made after Tune's last
        snapshot, which the next trials Tune asks for will run (so none stays RUNNING)."""
        study = optuna.load_study(
            study_name=self._name, storage=open_storage(self._location, writer=True), sampler=None
        )
        trials = study.get_trials(deepcopy=False)
        own = [t for t in trials if WARM_START_FROM not in t.user_attrs]
        # A new seed on each reopening: the same one would propose again what it proposed before.
        study.sampler = make_sampler(self._seed + len(own), n_startup_trials=self._n_startup_trials)
        self._study = study
        for t in own:
            ray_id = t.user_attrs.get(RAY_TRIAL_ID)
            if t.state != TrialState.RUNNING:
                continue
            if ray_id is not None and (known is None or ray_id in known):
                self._live[ray_id] = live_trial(study, t)
                self._curves[ray_id] = dict(t.intermediate_values)
                if BEST_VAL_NDCG in t.user_attrs:
                    self._best_ranking[ray_id] = float(t.user_attrs[BEST_VAL_NDCG])
            else:
                self._orphans.append(t)
        if self._num_samples > 0:
            self._asks_left = self._num_samples - len(own)

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles the searcher with the experiment; the study is reopened from its storage.
        state = self.__dict__.copy()
        for key in ("_study", "_live", "_curves", "_best_ranking", "_orphans", "_asks_left"):
            state.pop(key)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._forget_study()

    # ------------------------------------------------------------ Tune's Searcher interface
    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        """The space is given up front; accept TuneConfig's metric and mode only if they are ours."""
        return metric in (None, self.metric) and mode in (None, self.mode) and not config

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        self._max_concurrent = max_concurrent
        return True  # handled here, counting the live trials a resumed driver picked up too

    def suggest(self, trial_id: str) -> dict | None:
        study = self.study
        if self._max_concurrent and len(self._live) >= self._max_concurrent:
            return None
        if self._orphans:
            frozen = self._orphans.pop(0)
            trial, params = live_trial(study, frozen), dict(frozen.params)
            self._curves[trial_id] = dict(frozen.intermediate_values)
        else:
            if self._asks_left is not None:
                if self._asks_left <= 0:
                    return Searcher.FINISHED
                self._asks_left -= 1
            trial = study.ask(self._space)
            params = dict(trial.params)
            self._curves[trial_id] = {}
        trial.set_user_attr(RAY_TRIAL_ID, trial_id)  # joins the study with the trial's folder
        self._live[trial_id] = trial
        self._suggested.add(trial_id)
        return params

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._live:
            self._record(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self._live:
            return
        if result:
            self._record(trial_id, result)  # the result ASHA stopped a trial on reaches only this hook
        failed = error or bool(result and result.get(DIVERGED))
        trial = self._live[trial_id]
        state, value = outcome_of_curve(
            self._curves[trial_id],
            failed=failed,
            max_epochs=trial_epochs(trial.params, self._max_epochs),
            mode=self.mode,
        )
        # skip_if_finished: a driver that died before Tune's snapshot may have told it already.
        self.study.tell(self._live.pop(trial_id), value, state=state, skip_if_finished=True)
        self._curves.pop(trial_id)
        self._best_ranking.pop(trial_id, None)

    def _record(self, trial_id: str, result: dict) -> None:
        value, step = result.get(self.metric), result.get(EPOCH)
        if value is None or step is None or not math.isfinite(value):
            return
        step, curve = int(step), self._curves[trial_id]
        if step in curve:  # a trial retried from a checkpoint repeats epochs
            return
        try:
            self._live[trial_id].report(float(value), step)
        except UpdateFinishedTrialError:
            return  # told already by a driver that died before Tune's snapshot
        curve[step] = float(value)
        self._record_ranking(trial_id, result.get(RANKING_METRIC))

    def _record_ranking(self, trial_id: str, value: Any) -> None:
        """Keep the trial's best ranking figure as a user attribute (written when it improves): the
        study then holds both objectives, while TPE's model and the trial's value stay on METRIC."""
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return
        if value > self._best_ranking.get(trial_id, -math.inf):
            self._best_ranking[trial_id] = float(value)
            self._live[trial_id].set_user_attr(BEST_VAL_NDCG, float(value))

    def save(self, checkpoint_path: str) -> None:
        write_json(checkpoint_path, {"format": 1, "suggested": sorted(self._suggested)})

    def restore(self, checkpoint_path: str) -> None:
        """After a driver restart: the Tune trials proposed for by the time of Tune's snapshot."""
        saved = json.loads(Path(checkpoint_path).read_text())
        self._suggested = set(saved["suggested"])
        self._forget_study()
        self._open(known=self._suggested)


def settle_stopped_trials(
    study: optuna.Study, last_results: dict[str, dict[str, Any]], *, max_epochs: int
) -> int:
    """Tell the study about trials Tune ended without telling the searcher (those running when
    --time-budget-s ran out, and any that never started): `last_results` maps each ended Tune trial
    to its last result. Their last result joins their curve, then they are told as tune.record.outcome
    says. Trials Tune will still resume (an interrupted run) are not in `last_results` and stay
    RUNNING. Returns how many were told."""
    settled = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        last = last_results.get(t.user_attrs.get(RAY_TRIAL_ID))
        if last is None:
            continue
        curve = dict(t.intermediate_values)
        epoch, value = last.get(EPOCH), last.get(METRIC)
        finite = isinstance(value, (int, float)) and math.isfinite(value)
        if epoch is not None and finite and int(epoch) not in curve:
            live_trial(study, t).report(float(value), int(epoch))
            curve[int(epoch)] = float(value)
        failed = bool(last.get(DIVERGED))
        state, best = outcome_of_curve(curve, failed=failed, max_epochs=trial_epochs(t.params, max_epochs))
        study.tell(t.number, best, state=state, skip_if_finished=True)
        settled += 1
    return settled
