"""The one place tune/ reaches into Ray's internals (read against ray 2.60.0).

Keep every such use here, each with the reason no public API does it; tests/test_internals.py fails,
naming the attribute, when a release changes one. Everything else in tune/ uses Ray's public API.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

from ray.tune import ResultGrid, Tuner
from ray.tune.schedulers import ASHAScheduler

RAY_VERSION_READ = "2.60.0"


# ---------------------------------------------------------------- ASHA's rung records
# Why internal: ASHAScheduler keeps the values recorded at each rung only in memory, and exposes
# neither them nor a way to save them; `Tuner.restore` brings it back empty (ray-project/ray#30838).
# tune.search.scheduler.PersistentASHA saves and reloads them through these functions.
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
    writer is a large share of the driver's work; tune.search.trial_logger writes result.json itself. Set
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


# ---------------------------------------------------------------- Tune's SIGINT handler
# Why internal: after Ctrl-C, `Tuner.fit()` returns as after a finished search (its handler ends the
# loop and saves the state, and says so only in a log line). Its handler, which `fit()` installs in
# the main thread unless TUNE_DISABLE_SIGINT_HANDLER is set, puts back the handler it replaced when
# a signal comes, and otherwise stays installed after `fit()` returns, where a later Ctrl-C would
# only set Tune's spent flag. tests/test_interrupts.py fails when a release changes either.
def fit_noting_interrupt(tuner: Tuner) -> tuple[ResultGrid, bool]:
    """`tuner.fit()`, and whether a SIGINT (Ctrl-C, or SIGTERM through tune.search.interrupts) stopped it.

    Also counts as stopped: a grid with trials neither terminated nor errored, which only an
    interrupted fit returns (a finished search or a spent budget ends every trial). The SIGINT
    handler from before the call is put back."""
    before = signal.getsignal(signal.SIGINT)
    tune_handles = threading.current_thread() is threading.main_thread() and not int(
        os.getenv("TUNE_DISABLE_SIGINT_HANDLER", "0")
    )
    try:
        grid = tuner.fit()
    finally:
        after = signal.getsignal(signal.SIGINT)
        if tune_handles:
            signal.signal(signal.SIGINT, before)
    unfinished = grid.num_terminated + grid.num_errors < len(grid)
    return grid, (tune_handles and after is before) or unfinished
