"""Which checkpoints stay on disk: a trial's newest one, and once trials end, only the best few.

A checkpoint holds about four copies of the model (weights, Adam's two moments, the best epoch's
weights), and a run on a small data set starts thousands of trials: keeping every checkpoint fills
a disk. Trials write their checkpoints into their folders themselves and Tune never sees them
(`tune.record.trial_files.save_trial_checkpoint`), because Tune's own retention
(`CheckpointConfig(num_to_keep=N)`) snapshots the whole experiment whenever a trial has saved N
checkpoints, a cost that grows with the trials. What no one needs is deleted:

- a trial's older checkpoints, by the trial itself once it saved a newer one (the newest also
  carries the best epoch's weights, and a resumed trial reads the newest in its folder);
- by this callback, in the driver, the last checkpoint of an ended trial (stopped, finished or
  failed) that is not among the best `keep_best` ended trials: the export takes the best trials',
  and a trial that is outside the best few when it ends can only fall further.
"""

from __future__ import annotations

import bisect
import math
from pathlib import Path
from typing import Any

from ray.tune import Callback

from tune.record.trial_files import empty_checkpoints, read_results


class CheckpointRetention(Callback):
    """Keep each trial's newest checkpoint while it runs, and the best `keep_best` ended trials' (-1: all)."""

    def __init__(self, *, metric: str, mode: str, keep_best: int) -> None:
        self._metric, self._sign, self._keep_best = metric, (1.0 if mode == "min" else -1.0), keep_best
        self._best: dict[str, float] = {}  # trial id -> best metric so far, signed so lower is better
        self._ended: list[tuple[float, str]] = []  # (best, trial folder), best first

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        value = result.get(self._metric)
        if _finite(value):
            signed = self._sign * value
            self._best[trial.trial_id] = min(signed, self._best.get(trial.trial_id, math.inf))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended_trial(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended_trial(trial)

    def _ended_trial(self, trial: Any) -> None:
        if self._keep_best < 0:
            return
        best = self._best.pop(trial.trial_id, None)
        if best is None:  # no result since a driver restart: its folder has them
            values = [r.get(self._metric) for r in read_results(Path(trial.path))]
            best = min((self._sign * v for v in values if _finite(v)), default=math.inf)
        bisect.insort(self._ended, (best, trial.path))
        while len(self._ended) > self._keep_best:
            _, path = self._ended.pop()
            empty_checkpoints(Path(path))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
