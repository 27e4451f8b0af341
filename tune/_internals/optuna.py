"""The one place tune/ reaches into Optuna's internals (read against optuna 5.0.0).

Keep every such use here, each with the reason no public API does it; tests/test_internals.py fails,
naming the attribute, when a release changes one. Everything else in tune/ uses Optuna's public API.
"""

from __future__ import annotations

import optuna

OPTUNA_VERSION_READ = "5.0.0"


def live_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> optuna.Trial:
    """A `Trial` to report intermediate values on, for a RUNNING trial of `study` that this process
    did not `ask` for (one a killed driver asked for, before a resume).

    Why internal: Optuna hands out `Trial` objects only from `ask()` and `optimize()`; building one for
    an existing trial takes its storage id, which `FrozenTrial` keeps in `_trial_id` (there is no
    public lookup from a trial's number to its id).
    """
    return optuna.Trial(study, trial._trial_id)
