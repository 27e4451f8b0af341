"""Ray Tune's Optuna searcher, made to tell Optuna what really happened to each trial.

Stock `OptunaSearch` steps intermediate values by `training_iteration` (which restarts on a
restore), never reports the result that ASHA stopped a trial on, and tells a stopped trial
COMPLETE with its last low-budget value, so TPE compares 1-epoch and 20-epoch values as equals.
Here each epoch is reported at step `epoch`; a trial that reached `max_epochs` is COMPLETE with
its best value; a trial stopped before (by ASHA or the time budget) is PRUNED with its curve; a
diverged or crashed trial is FAIL.

Every call on the study (ask, report, tell) runs on a thread of its own, in order
(`tune/study_calls.py`), so that Tune's event loop never waits on the study's storage.
"""

from __future__ import annotations

import contextlib
import math
import pickle
from concurrent.futures import Future
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch
from ray.tune.utils.util import unflatten_dict

from mf.metrics import EPOCH
from tune.study_calls import StudyCalls

DIVERGED = "diverged"
"""Result key set to 1 by the trainable on the report that ends a diverged trial."""


RAY_TRIAL_ID = "ray_trial_id"
WARM_START_FROM = "warm_start_from"
"""User attribute of a trial copied from an earlier study by --warm-start (not a trial of this run)."""
NOT_STARTED = "not_started"
"""User attribute of a FAIL trial that TPE proposed as the run ended and no Tune trial ever ran."""

_UNPICKLED = ("_calls", "_asking")
"""The study thread and the ask in flight: neither is saved with the searcher."""


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


def _report(trial: optuna.Trial, value: float, step: int) -> None:
    # UpdateFinishedTrialError: told already by a driver that died before it could save that.
    with contextlib.suppress(UpdateFinishedTrialError):
        trial.report(value, step)


class TruthfulOptunaSearch(OptunaSearch):
    """OptunaSearch with per-epoch intermediate values and PRUNED / COMPLETE / FAIL told truthfully."""

    def __init__(self, *, max_epochs: int, num_samples: int = -1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._max_epochs = max_epochs
        self._num_samples = num_samples
        self._last_step: dict[str, int] = {}
        self._orphans: list[optuna.trial.FrozenTrial] = []
        # Asks left for this run (None: no limit): TPE proposes each trial ahead of time, and must
        # not propose one more than --num-samples.
        self._asks_left: int | None = num_samples if num_samples > 0 else None
        self._calls = StudyCalls()
        self._asking: Future[optuna.Trial] | None = None

    @property
    def study(self) -> optuna.Study:
        """The study, with every call sent to it done."""
        self._calls.flush()
        return self._ot_study

    def flush(self) -> None:
        """Wait for the study calls sent so far: after it, the study's storage holds everything told."""
        self._calls.flush()

    def suggest(self, trial_id: str) -> dict | None:
        """The next trial's params. TPE proposed them on the study thread while the last trials ran
        (asked as soon as the previous proposal was taken), so Tune's loop seldom waits for them."""
        if self._orphans and trial_id not in self._ot_trials:
            # A proposal the killed driver made but never saved: run it now instead of asking anew,
            # so the study holds no RUNNING trial that nobody will finish.
            self._calls.flush()
            orphan = self._orphans.pop(0)
            self._ot_trials[trial_id] = optuna.Trial(self._ot_study, orphan._trial_id)
            self._last_step[trial_id] = max(orphan.intermediate_values, default=0)
            return self._hand_out(trial_id, orphan.params)
        if self._asking is None and not self._send_ask():
            return Searcher.FINISHED
        assert self._asking is not None
        ot_trial = self._asking.result()
        self._asking = None
        self._ot_trials[trial_id] = ot_trial
        params = self._hand_out(trial_id, ot_trial.params)
        self._send_ask()
        return params

    def _send_ask(self) -> bool:
        """Start TPE on the next proposal, unless --num-samples trials have been asked for."""
        if self._asks_left is not None:
            if self._asks_left <= 0:
                return False
            self._asks_left -= 1
        self._asking = self._calls.send(self._ot_study.ask, fixed_distributions=self._space)
        return True

    def _hand_out(self, trial_id: str, params: dict[str, Any]) -> dict:
        # Lets trials.csv and the report join Tune's trial with Optuna's.
        self._calls.send(self._ot_trials[trial_id].set_user_attr, RAY_TRIAL_ID, trial_id)
        return unflatten_dict(params)

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
            self._calls.send(_report, self._ot_trials[trial_id], float(value), step)
            self._last_step[trial_id] = step

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        if result:
            # The result ASHA stopped a trial on never reaches on_trial_result.
            self._record(trial_id, result)
        failed = error or bool(result and result.get(DIVERGED))
        self._calls.send(self._tell, self._ot_trials[trial_id], failed)
        self._completed_trials.add(trial_id)

    def _tell(self, ot_trial: optuna.Trial, failed: bool) -> None:
        """Runs on the study thread, after the trial's last report."""
        stored = self._ot_study._storage.get_trial(ot_trial._trial_id)
        if stored.state.is_finished():
            return  # told by a driver that died before it could save that
        state, value = outcome_of_curve(
            stored.intermediate_values, failed=failed, max_epochs=self._max_epochs, mode=self.mode
        )
        self._ot_study.tell(ot_trial, value, state=state)

    def save(self, checkpoint_path: str) -> None:
        """What Tune's experiment snapshot keeps: the searcher as the study stands after every call
        sent. A proposal still being asked is left out; after a restart it is an orphan (see restore)."""
        self._calls.flush()
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.__getstate__(), file)

    def restore(self, checkpoint_path: str) -> None:
        """After a driver restart, from a searcher saved some time before the driver died: find the
        study's RUNNING trials that it never knew (to run them instead of asking anew), and with a
        fixed --num-samples, count the trials it never knew that finished, which Tune's (equally old)
        snapshot does not count: the study ends up with --num-samples trials of this run, no more."""
        self._calls.flush()
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

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles the searcher with the Tuner and in its snapshots; a thread does not pickle.
        self._calls.flush()
        return {k: v for k, v in self.__dict__.items() if k not in _UNPICKLED}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._calls = StudyCalls()
        self._asking = None
