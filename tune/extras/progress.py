"""One quiet, live line for a tuning run, in place of Ray Tune's own console output.

Ray Tune 2.60 prints a box per trial at its start and end (the default `verbose=1`), a status table
every 30 s, and the experiment's configuration at the start even with `verbose=0` (its new output
engine, `ray.tune.experimental.output`); Ray itself logs at INFO and forwards every worker's
stdout to the driver. A 7-minute run printed 50,380 lines. `ray_output(verbose=False)` turns all of
that off by public means, and `LiveProgress` shows instead one line:

    tune 2:31/7:00 | 2 running, 130 complete, 900 pruned, 3 failed | 1,523 epochs, 10.1/s | best val_mse 0.8412 (trial 3a4f_00012)

refreshed in place in a terminal (a tqdm bar over the time budget), and printed again every
`interval_s` seconds when stdout is not a terminal (a file, a `ray job submit` log).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from ray.tune import Callback
from tqdm import tqdm

from tune.record.keys import ALREADY_LOGGED, VAL_MSE
from tune.record.outcome import COMPLETE, FAIL, PRUNED, trial_outcome

SHOWN = {COMPLETE: "complete", PRUNED: "pruned", FAIL: "failed"}
"""How the line names each outcome."""
AIR_NEW_OUTPUT_ENV = "RAY_AIR_NEW_OUTPUT"
SLOW_HINTS_LOGGER = "ray.tune.utils.util"


@dataclass(frozen=True)
class RayOutput:
    """What to pass Ray so that it prints what the user asked for."""

    run_config_verbose: int
    """For `tune.RunConfig(verbose=...)`."""
    init_kwargs: dict[str, Any]
    """For `ray.init(**init_kwargs)` (also when joining a cluster or a job's Ray)."""


def ray_output(*, verbose: bool) -> RayOutput:
    """Ray's own console output on (`verbose`, as Ray prints by default) or off.

    Off means, each by a public switch (read in Ray 2.60's sources):
    - `RunConfig(verbose=0)` and `RAY_AIR_NEW_OUTPUT=0`: with verbose=0 the new output engine still
      prints the experiment's configuration and "View detailed results here"; the legacy reporter
      at verbosity 0 prints nothing. Tune reads the variable when `fit()` starts, so this function
      sets it in `os.environ` (and removes a 0 there when `verbose`, for a run in the same process).
    - `ray.init(log_to_driver=False)`: workers' stdout and stderr stay in their log files under the
      session folder instead of being copied to the driver's console.
    - `ray.init(logging_level=WARNING)`: no INFO lines from Ray and Tune ("Started a local Ray
      instance", "Wrote the latest version of all result files"); warnings and errors still print,
      except Tune's "The `process_trial_result` operation took 0.541 s, which may be a performance
      bottleneck" hints (logger `ray.tune.utils.util`, up to four lines each time the driver is
      slow, as it is on a busy machine; their threshold, TUNE_WARN_THRESHOLD_S, is read when Ray
      is imported, too early to set from here).
    """
    slow_hints = logging.getLogger(SLOW_HINTS_LOGGER)
    if verbose:
        if os.environ.get(AIR_NEW_OUTPUT_ENV) == "0":
            del os.environ[AIR_NEW_OUTPUT_ENV]
        slow_hints.setLevel(logging.NOTSET)
        return RayOutput(
            run_config_verbose=1, init_kwargs={"log_to_driver": True, "logging_level": logging.INFO}
        )
    os.environ[AIR_NEW_OUTPUT_ENV] = "0"
    slow_hints.setLevel(logging.ERROR)
    return RayOutput(
        run_config_verbose=0, init_kwargs={"log_to_driver": False, "logging_level": logging.WARNING}
    )


@dataclass
class ProgressState:
    """What the line shows; kept up to date by `LiveProgress`'s hooks, cheap to update."""

    time_budget_s: float | None = None
    started: float = field(default_factory=time.monotonic)
    running: set[str] = field(default_factory=set)
    outcomes: dict[str, int] = field(default_factory=lambda: {COMPLETE: 0, PRUNED: 0, FAIL: 0})
    ended: set[str] = field(default_factory=set)
    epochs: int = 0
    best: float = math.inf
    best_trial: str | None = None

    def elapsed(self, now: float | None = None) -> float:
        return (time.monotonic() if now is None else now) - self.started

    def end(self, trial_id: str, outcome: str) -> None:
        if trial_id in self.ended:
            return
        self.ended.add(trial_id)
        self.running.discard(trial_id)
        self.outcomes[outcome] += 1

    def score(self, trial_id: str, value: Any) -> None:
        if isinstance(value, (int, float)) and math.isfinite(value) and value < self.best:
            self.best, self.best_trial = float(value), trial_id

    def line(self, now: float | None = None) -> str:
        elapsed = self.elapsed(now)
        clock = _clock(elapsed) + (f"/{_clock(self.time_budget_s)}" if self.time_budget_s else "")
        counts = ", ".join(f"{self.outcomes[k]} {label}" for k, label in SHOWN.items())
        rate = self.epochs / elapsed if elapsed > 0 else 0.0
        best = (
            f"best {VAL_MSE} {self.best:.4f} (trial {self.best_trial})"
            if self.best_trial
            else "no result yet"
        )
        return f"tune {clock} | {len(self.running)} running, {counts} | {self.epochs:,} epochs, {rate:.1f}/s | {best}"


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class LiveProgress(Callback):
    """A `ray.tune.Callback` that keeps one progress line (see the module docstring).

    Its hooks only update counters; the line is drawn from `on_step_end` (Tune's loop runs a step
    at least every 0.1 s), at most every `refresh_s` seconds in a terminal and every `interval_s`
    seconds otherwise, and once more at the end, so that the run's summary printed after `fit()`
    returns is the last thing on the console. A resumed run counts the trials that ended before
    from Tune's restored trial list.
    """

    def __init__(
        self,
        *,
        max_epochs: int,
        time_budget_s: float | None = None,
        interval_s: float = 30.0,
        refresh_s: float = 0.5,
        stream: TextIO | None = None,
        tty: bool | None = None,
    ) -> None:
        if max_epochs < 1:
            raise ValueError(f"max_epochs: {max_epochs!r}; expected an int >= 1")
        if interval_s <= 0 or refresh_s <= 0:
            raise ValueError(f"interval_s, refresh_s: {interval_s!r}, {refresh_s!r}; expected seconds > 0")
        self.max_epochs = max_epochs
        self.time_budget_s = time_budget_s
        self.interval_s = interval_s
        self.refresh_s = refresh_s
        self._stream = stream
        self._tty = tty
        self.state = ProgressState(time_budget_s)
        self._bar: tqdm | None = None
        self._last_drawn = -math.inf
        self._seeded = False
        self._closed = False

    # Tune pickles the RunConfig, callbacks included, into the experiment (tuner.pkl), and
    # `Tuner.restore` runs that copy: only the settings travel (the stream back to stdout).
    def __getstate__(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("max_epochs", "time_budget_s", "interval_s", "refresh_s")} | {
            "_tty": self._tty
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        tty = state.pop("_tty")
        self.__init__(**state, tty=tty)  # type: ignore[misc]

    # --------------------------------------------------------------- Tune's hooks
    def setup(self, **info: Any) -> None:
        self.state.started = time.monotonic()
        stream = self._stream or sys.stdout
        self._stream = stream
        if self._tty is None:
            self._tty = bool(getattr(stream, "isatty", lambda: False)())
        # In a terminal the line is drawn at once; elsewhere the first is printed after interval_s.
        self._last_drawn = -math.inf if self._tty else self.state.started
        if self._tty:
            budget = self.time_budget_s
            self._bar = tqdm(
                total=budget if budget else None,
                file=stream,
                bar_format="|{bar:12}| {desc}" if budget else "{desc}",
                dynamic_ncols=True,
                leave=True,
                mininterval=0,
            )

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if not self._seeded:
            self._seeded = True
            self._seed(trials)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.state.running.add(trial.trial_id)

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        if result.get(ALREADY_LOGGED):
            return
        self.state.epochs += 1
        self.state.score(trial.trial_id, result.get(VAL_MSE))

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.state.end(trial.trial_id, trial_outcome("TERMINATED", trial.last_result or {}, self.max_epochs))

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.state.end(trial.trial_id, FAIL)

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        now = time.monotonic()
        if now - self._last_drawn >= (self.refresh_s if self._tty else self.interval_s):
            self._draw(now)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        # Trials that the time budget stopped end without on_trial_complete (Tune stops them
        # directly): they count as their last result says.
        for trial in trials:
            if trial.trial_id in self.state.running:
                self.state.end(
                    trial.trial_id, trial_outcome(trial.status, trial.last_result or {}, self.max_epochs)
                )
        self.close()

    # --------------------------------------------------------------- drawing
    def close(self) -> None:
        """Draw the final line and release the terminal; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._draw(time.monotonic(), final=True)
        if self._bar is not None:
            self._bar.close()

    def _draw(self, now: float, *, final: bool = False) -> None:
        self._last_drawn = now
        line = self.state.line(now)
        if self._bar is not None:
            if self.time_budget_s:
                self._bar.n = min(self.state.elapsed(now), self.time_budget_s)
            self._bar.set_description_str(line, refresh=False)
            self._bar.refresh()
        else:
            print(line, file=self._stream, flush=True)

    def _seed(self, trials: list[Any]) -> None:
        """Trials a resumed run restored as ended: counted, and their best value taken."""
        for trial in trials:
            if trial.status in ("TERMINATED", "ERROR"):
                self.state.end(
                    trial.trial_id, trial_outcome(trial.status, trial.last_result or {}, self.max_epochs)
                )
                best = (getattr(trial, "metric_analysis", None) or {}).get(VAL_MSE, {}).get("min")
                self.state.score(trial.trial_id, best)
