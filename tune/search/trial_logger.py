"""The driver's side of a trial's folder: every result, the params and the failures, as they happen.

A `ray.tune.logger.LoggerCallback` (Tune's public logger interface) writing straight into the
trial's folder in the experiment, a local or shared file system path. Tune's own JSON logger writes
to a staging folder and copies it over at each snapshot of the experiment, so the folders of a
killed driver would be only as new as its last snapshot; tune.record.trial_files says what each file holds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import IO, Any

from ray.tune.logger import LoggerCallback

from mf.atomic import atomic_write_text
from tune.record.keys import ALREADY_LOGGED
from tune.record.trial_files import (
    ERROR_EVENT,
    EVENTS_FILE,
    PARAMS_FILE,
    RESULT_FILE,
    RETRY_EVENT,
    append_json_line,
    drop_cut_last_line,
    json_line,
)


class TrialFolderLogger(LoggerCallback):
    """Appends each epoch's result to `<trial>/result.json`, writes `params.json` at the trial's start, and
    records in `events.json` each failure Tune retries and the one it does not."""

    def __init__(self) -> None:
        self._files: dict[str, IO[str]] = {}

    def log_trial_start(self, trial: Any) -> None:
        folder = Path(trial.path)
        folder.mkdir(parents=True, exist_ok=True)
        params = json.dumps(trial.config, indent=2, sort_keys=True, default=str)
        atomic_write_text(folder / PARAMS_FILE, params, fsync=False)  # written again by a resumed trial
        self._close(trial)
        path = folder / RESULT_FILE
        drop_cut_last_line(path)
        self._files[trial.trial_id] = path.open("a")

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        if result.get(ALREADY_LOGGED):
            return
        if trial.trial_id not in self._files:
            self.log_trial_start(trial)
        f = self._files[trial.trial_id]
        f.write(json_line(result))
        f.flush()

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        self._close(trial)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._event(trial, RETRY_EVENT)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._event(trial, ERROR_EVENT)
        super().on_trial_error(iteration, trials, trial, **info)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        for trial_id in list(self._files):
            self._files.pop(trial_id).close()

    def _event(self, trial: Any, kind: str) -> None:
        # Tune writes the traceback to error.txt in the trial's folder.
        append_json_line(Path(trial.path) / EVENTS_FILE, {"event": kind, "time": time.time()})

    def _close(self, trial: Any) -> None:
        f = self._files.pop(trial.trial_id, None)
        if f is not None:
            f.close()
