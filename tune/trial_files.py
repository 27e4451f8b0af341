"""A trial's folder: its results, written as they arrive, and its checkpoints; read back from disk.

Tune snapshots the experiment (which trials exist, their last result and checkpoint) every ten
seconds or so, not after every result: snapshotting after every checkpoint, as Tune does when a
trial keeps one checkpoint, made the driver the bottleneck of a long run (the snapshot grows with
the trials). So the truth about a trial is its folder, and its folder is always current:

- `result.json`: one JSON line per result, appended by `TrialFolderLogger` in the driver as the
  result arrives (Tune's own JSON logger writes to a staging folder and copies it over at each
  snapshot, so a killed driver's folders were as old as its last snapshot);
- `checkpoint_*/state.pt`: each written by the trial's worker (`save_trial_checkpoint`).

A resumed trial, trials.csv and the export read these instead of Tune's (maybe older) snapshot.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ray.cloudpickle as cloudpickle
from ray.air.constants import EXPR_PARAM_FILE, EXPR_PARAM_PICKLE_FILE, EXPR_RESULT_FILE
from ray.tune.logger import JsonLoggerCallback
from ray.tune.utils.util import SafeFallbackEncoder

from mf.errors import MFError
from mf.training import Trainer, read_checkpoint
from tune.searcher import DIVERGED

CHECKPOINT_FILE = "state.pt"
RESULT_FILE = EXPR_RESULT_FILE
ALREADY_LOGGED = "already_logged"
"""Result key set by a trial that sends its last result again after a driver restart."""


def trial_dirname(trial_id: str) -> str:
    """Short trial folder names (Tune's default spells out every parameter)."""
    return f"trial_{trial_id}"


def read_results(trial_dir: Path) -> list[dict[str, Any]]:
    """The trial's results in the order they arrived; a last line cut short by a kill is left out."""
    path = trial_dir / RESULT_FILE
    if not path.is_file():
        return []
    results = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        try:
            results.append(json.loads(line))
        except json.JSONDecodeError as e:
            if number == len(lines):
                break  # the driver died while writing it
            raise MFError(f"{path}, line {number}: not a JSON result ({e})") from e
    return results


def drop_cut_last_line(path: Path) -> None:
    """Cut off a last line a killed driver left unfinished, so that the next result starts a line
    of its own instead of gluing onto it (which would damage both)."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def has_ended(result: dict[str, Any]) -> bool:
    """Whether this result was a trial's last: Tune marks `done` on the one ASHA stopped it on
    (at max_epochs too), and a diverged trial ends on its own."""
    return bool(result.get("done")) or bool(result.get(DIVERGED))


def checkpoint_files(trial_dir: Path) -> list[Path]:
    """The state files of the trial's checkpoints that are still on disk (`empty_checkpoints`
    deletes the files no one needs and keeps the folders)."""
    return list(trial_dir.glob(f"checkpoint_*/{CHECKPOINT_FILE}"))


def empty_checkpoints(trial_dir: Path, *, except_folder: str | None = None) -> int:
    """Delete the state files of the trial's checkpoints (all but `except_folder`); return how many.

    The folders stay: an experiment written before trials saved their own checkpoints has Tune's
    snapshot naming them, and Tune refuses to restore a trial whose checkpoint folder is gone.
    """
    deleted = 0
    for path in checkpoint_files(trial_dir):
        if path.parent.name != except_folder:
            path.unlink(missing_ok=True)
            deleted += 1
    return deleted


def save_trial_checkpoint(trainer: Trainer, trial_dir: Path) -> Path:
    """Write the trial's checkpoint at its current epoch into its folder, then delete its older ones
    (the newest carries the best epoch's weights too).

    The worker writes it where everything reads it (a shared file system on a cluster), instead
    of handing it to `tune.report`: Tune would copy it from a temp folder and hold the trial's
    next step for a `save` round trip with the driver, at the rungs where most trials end. Not
    fsynced (it is written at every rung): if the machine holding the file crashes before the OS
    writes it out, it is left empty and a retry of the trial starts from its first epoch.
    """
    path = trial_dir / f"checkpoint_epoch_{trainer.epoch:06d}" / CHECKPOINT_FILE
    trainer.save_checkpoint(path, fsync=False)
    empty_checkpoints(trial_dir, except_folder=path.parent.name)
    return path


def newest_checkpoint(trial_dir: Path) -> dict[str, Any] | None:
    """The state of the trial's checkpoint with the most epochs, or None.

    Chosen by the epoch inside, not the folder's number: a resumed trial numbers its checkpoints
    from Tune's snapshot, which may be older than the folders on disk. A checkpoint that cannot be
    read (its copy was cut short by a kill) is passed over.
    """
    newest = None
    for path in checkpoint_files(trial_dir):
        try:
            state = read_checkpoint(path)
        except MFError:
            continue
        if newest is None or state["epoch"] > newest["epoch"]:
            newest = state
    return newest


class TrialFolderLogger(JsonLoggerCallback):
    """Tune's JSON logger, writing each trial's result.json and params straight into the trial's
    folder in the experiment (a local or shared file system path, never a cloud URI here)."""

    def log_trial_start(self, trial: Any) -> None:
        if trial in self._trial_files:
            self._trial_files[trial].close()
        folder = Path(trial.path)
        folder.mkdir(parents=True, exist_ok=True)
        self.update_config(trial, trial.config)
        path = folder / RESULT_FILE
        drop_cut_last_line(path)
        self._trial_files[trial] = path.open("a")

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        if not result.get(ALREADY_LOGGED):
            super().log_trial_result(iteration, trial, result)

    def update_config(self, trial: Any, config: dict) -> None:
        self._trial_configs[trial] = config
        folder = Path(trial.path)
        text = json.dumps(config, indent=2, sort_keys=True, cls=SafeFallbackEncoder)
        (folder / EXPR_PARAM_FILE).write_text(text)
        (folder / EXPR_PARAM_PICKLE_FILE).write_bytes(cloudpickle.dumps(config))
