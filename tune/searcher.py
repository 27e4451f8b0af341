"""Ray Tune's Optuna searcher, made to tell Optuna what really happened to each trial.

Stock `OptunaSearch` steps intermediate values by `training_iteration` (which restarts on a
restore), never reports the result that ASHA stopped a trial on, and tells a stopped trial
COMPLETE with its last low-budget value, so TPE compares 1-epoch and 20-epoch values as equals.
Here each epoch is reported at step `epoch`; a trial that reached `max_epochs` is COMPLETE with
its best value; a trial stopped before (by ASHA or the time budget) is PRUNED with its curve; a
diverged or crashed trial is FAIL.
"""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch
from ray.tune.utils.util import unflatten_dict

from mf.metrics import EPOCH

DIVERGED = "diverged"
"""Result key set to 1 by the trainable on the report that ends a diverged trial."""


RAY_TRIAL_ID = "ray_trial_id"


class TruthfulOptunaSearch(OptunaSearch):
    """OptunaSearch with per-epoch intermediate values and PRUNED / COMPLETE / FAIL told truthfully."""

    def __init__(self, *, max_epochs: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._max_epochs = max_epochs
        self._best: dict[str, float] = {}
        self._last_step: dict[str, int] = {}
        self._orphans: list[optuna.trial.FrozenTrial] = []

    @property
    def study(self) -> optuna.Study:
        return self._ot_study

    def suggest(self, trial_id: str) -> dict | None:
        if self._orphans and trial_id not in self._ot_trials:
            # A proposal the killed driver made but never saved: run it now instead of asking anew,
            # so the study holds no RUNNING trial that nobody will finish.
            orphan = self._orphans.pop(0)
            self._ot_trials[trial_id] = optuna.Trial(self._ot_study, orphan._trial_id)
            self._last_step[trial_id] = max(orphan.intermediate_values, default=0)
            self._ot_trials[trial_id].set_user_attr(RAY_TRIAL_ID, trial_id)
            return unflatten_dict(orphan.params)
        params = super().suggest(trial_id)
        if trial_id in self._ot_trials:
            # Lets trials.csv and the report join Tune's trial with Optuna's.
            self._ot_trials[trial_id].set_user_attr(RAY_TRIAL_ID, trial_id)
        return params

    def restore(self, checkpoint_path: str) -> None:
        """After a driver restart: find the study's RUNNING trials that the saved searcher never knew."""
        super().restore(checkpoint_path)
        known = {t._trial_id for t in self._ot_trials.values()}
        running = self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        self._orphans = [t for t in running if t._trial_id not in known]

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        self._record(trial_id, result)

    def _record(self, trial_id: str, result: dict) -> None:
        value, step = result.get(self.metric), result.get(EPOCH)
        if value is None or step is None or not math.isfinite(value):
            return
        step = int(step)
        if step > self._last_step.get(trial_id, 0):
            # A trial retried from a checkpoint repeats epochs; a step already reported is skipped.
            try:
                self._ot_trials[trial_id].report(float(value), step)
            except UpdateFinishedTrialError:
                return  # told already by a driver that died before it could save that
            self._last_step[trial_id] = step
        best = self._best.get(trial_id)
        if best is None or (value < best if self.mode == "min" else value > best):
            self._best[trial_id] = float(value)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        if result:
            # The result ASHA stopped a trial on never reaches on_trial_result.
            self._record(trial_id, result)
        state, value = self.outcome(trial_id, result, error)
        ot_trial = self._ot_trials[trial_id]
        if not self._ot_study._storage.get_trial(ot_trial._trial_id).state.is_finished():
            self._ot_study.tell(ot_trial, value, state=state)
        self._completed_trials.add(trial_id)

    def outcome(self, trial_id: str, result: dict | None, error: bool) -> tuple[TrialState, float | None]:
        """The Optuna state and value that describe how the trial ended."""
        if error or not result or result.get(DIVERGED) or trial_id not in self._best:
            return TrialState.FAIL, None
        if int(result.get(EPOCH, 0)) >= self._max_epochs:
            return TrialState.COMPLETE, self._best[trial_id]
        # Stopped early: Optuna takes the last intermediate value for a PRUNED trial.
        return TrialState.PRUNED, None
