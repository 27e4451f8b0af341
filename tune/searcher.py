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
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch
from ray.tune.utils.util import unflatten_dict

from mf.metrics import EPOCH

DIVERGED = "diverged"
"""Result key set to 1 by the trainable on the report that ends a diverged trial."""


RAY_TRIAL_ID = "ray_trial_id"
WARM_START_FROM = "warm_start_from"
"""User attribute of a trial copied from an earlier study by --warm-start (not a trial of this run)."""


def outcome_of_curve(
    curve: dict[int, float], *, failed: bool, max_epochs: int, mode: str = "min"
) -> tuple[TrialState, float | None]:
    """How a trial ended, from its intermediate values (epoch -> val MSE): COMPLETE with its best
    value if it reached `max_epochs`, PRUNED if stopped before, FAIL if it failed or has none."""
    if failed or not curve:
        return TrialState.FAIL, None
    if max(curve) >= max_epochs:
        return TrialState.COMPLETE, (min if mode == "min" else max)(curve.values())
    return TrialState.PRUNED, None  # Optuna takes the last intermediate value for a PRUNED trial


class TruthfulOptunaSearch(OptunaSearch):
    """OptunaSearch with per-epoch intermediate values and PRUNED / COMPLETE / FAIL told truthfully."""

    def __init__(self, *, max_epochs: int, num_samples: int = -1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._max_epochs = max_epochs
        self._num_samples = num_samples
        self._last_step: dict[str, int] = {}
        self._orphans: list[optuna.trial.FrozenTrial] = []
        self._asks_left: int | None = None

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
        if self._asks_left is not None:
            if self._asks_left <= 0:
                return Searcher.FINISHED
            self._asks_left -= 1
        params = super().suggest(trial_id)
        if trial_id in self._ot_trials:
            # Lets trials.csv and the report join Tune's trial with Optuna's.
            self._ot_trials[trial_id].set_user_attr(RAY_TRIAL_ID, trial_id)
        return params

    def restore(self, checkpoint_path: str) -> None:
        """After a driver restart, from a searcher saved some time before the driver died: find the
        study's RUNNING trials that it never knew (to run them instead of asking anew), and with a
        fixed --num-samples, count the trials it never knew that finished, which Tune's (equally old)
        snapshot does not count: the study ends up with --num-samples trials of this run, no more."""
        super().restore(checkpoint_path)
        known = {t._trial_id for t in self._ot_trials.values()}
        trials = self._ot_study.get_trials(deepcopy=False)
        self._orphans = [t for t in trials if t.state == TrialState.RUNNING and t._trial_id not in known]
        if any(t._trial_id not in known and WARM_START_FROM not in t.user_attrs for t in trials):
            # The sampler's random state was saved with the searcher: left as it is, it would
            # propose again what it proposed after the save.
            self._ot_study.sampler.reseed_rng()
        if self._num_samples > 0:
            this_run = [t for t in trials if WARM_START_FROM not in t.user_attrs]
            self._asks_left = self._num_samples - len(this_run)

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

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        if result:
            # The result ASHA stopped a trial on never reaches on_trial_result.
            self._record(trial_id, result)
        ot_trial = self._ot_trials[trial_id]
        stored = self._ot_study._storage.get_trial(ot_trial._trial_id)
        if not stored.state.is_finished():  # else told by a driver that died before it could save that
            failed = error or bool(result and result.get(DIVERGED))
            state, value = outcome_of_curve(
                stored.intermediate_values, failed=failed, max_epochs=self._max_epochs, mode=self.mode
            )
            self._ot_study.tell(ot_trial, value, state=state)
        self._completed_trials.add(trial_id)
