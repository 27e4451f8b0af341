"""mf-tune's search: Ray Tune runs the trials, Optuna's TPE proposes them, ASHA stops the weak ones;
the best configurations are confirmed with fresh seeds, refit, and exported with their test error.

The command line is `python -m tune.run` (and `tune.export`, `tune.report`); from Python:

    import tune
    from search_spaces import load_space

    settings = tune.ExperimentSettings(name="small", num_samples=8, max_epochs=4)
    base = tune.experiment_config({"data": "ml-latest-small"})  # a test part held out, as the CLI does
    outcome = tune.run_experiment(settings, base, load_space("default"))
    metrics = tune.export_best(outcome.experiment_dir, dataset=outcome.dataset)

Names are imported when first used, so that reading an experiment's files (`tune.export_best`,
`tune.collect_and_write_trials`) does not start by importing Ray.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "ExperimentSettings": "tune.settings",
    "RunOptions": "tune.settings",
    "experiment_config": "tune.settings",
    "read_experiment": "tune.settings",
    "recorded_settings": "tune.settings",
    "run_experiment": "tune.search.experiment",
    "resume_experiment": "tune.search.experiment",
    "RunOutcome": "tune.search.experiment",
    "export_best": "tune.export.best",
    "export_best_ranking": "tune.export.best",
    "collect_and_write_trials": "tune.export.best",
    "TrialRecord": "tune.record.results",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'tune' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
