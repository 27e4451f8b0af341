"""The one place tune/ reaches into Ray's internals (read against ray 2.60.0).

Keep every such use here, each with the reason no public API does it; tests/test_internals.py fails,
naming the attribute, when a release changes one. Everything else in tune/ uses Ray's public API.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from ray.tune.schedulers import ASHAScheduler

RAY_VERSION_READ = "2.60.0"


# ---------------------------------------------------------------- ASHA's rung records
# Why internal: ASHAScheduler keeps the values recorded at each rung only in memory, and exposes
# neither them nor a way to save them; `Tuner.restore` brings it back empty (ray-project/ray#30838).
# tune.scheduler.PersistentASHA saves and reloads them through these functions.
def asha_rungs(scheduler: ASHAScheduler) -> list[dict[int, dict[str, float]]]:
    """Per bracket: rung epoch -> {trial id: recorded reward} (the live dicts, to read and fill)."""
    return [{int(milestone): recorded for milestone, recorded in b._rungs} for b in scheduler._brackets]


def asha_num_stopped(scheduler: ASHAScheduler) -> int:
    return int(scheduler._num_stopped)


def set_asha_num_stopped(scheduler: ASHAScheduler, count: int) -> None:
    scheduler._num_stopped = int(count)


def asha_trial_brackets(scheduler: ASHAScheduler) -> dict[str, int]:
    """Trial id -> index of the bracket ASHA put it in (it draws one at random per new trial)."""
    return {trial_id: scheduler._brackets.index(b) for trial_id, b in scheduler._trial_info.items()}


def set_asha_trial_bracket(scheduler: ASHAScheduler, trial_id: str, bracket: int) -> None:
    scheduler._trial_info[trial_id] = scheduler._brackets[bracket]


# ---------------------------------------------------------------- Tune's default loggers
@contextlib.contextmanager
def without_default_loggers() -> Iterator[None]:
    """Run `Tuner.fit()` without Tune's default CSV, JSON and TensorBoard loggers.

    Why an environment variable: `TUNE_DISABLE_AUTO_CALLBACK_LOGGERS` (documented among Tune's
    environment variables) is the only switch; Tune reads it when `fit()` builds its callbacks. The
    JSON logger stages every trial's result.json and copies it at each snapshot, and the TensorBoard
    writer is a large share of the driver's work; tune.trial_logger writes result.json itself. Set
    for the call only, and put back after it.
    """
    name, before = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", os.environ.get("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS")
    os.environ[name] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before
