"""A trial's folder: the one record of what the trial did, written as it happens, read back from disk.

Tune snapshots the experiment (which trials exist, their status) every ten seconds or so, not after
every result: the snapshot grows with the trials, and snapshotting often made the driver the
bottleneck. So the truth about what a trial did is its folder, which is always current:

- `result.json`: one JSON line per result, appended by the driver as the result arrives
  (`tune.search.trial_logger.TrialFolderLogger`);
- `params.json`: the trial's sampled parameters;
- `events.json`: one JSON line per failure the driver saw (retried or final);
- `checkpoint_epoch_NNNNNN/state.pt`: written by the trial's worker (`save_trial_checkpoint`).

Resume and retry (the trainable), trials.csv, the export and the report read these through this
module; nothing here imports Ray, nor torch until a checkpoint is read.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mf.errors import MFError
from tune.record.keys import DIVERGED, DONE

if TYPE_CHECKING:
    from mf.training import Trainer

RESULT_FILE = "result.json"  # the names Tune's own JSON logger uses, so Tune's tools read them too
PARAMS_FILE = "params.json"
EVENTS_FILE = "events.json"
CHECKPOINT_FILE = "state.pt"
RETRY_EVENT, ERROR_EVENT = "retry", "error"
"""The events the driver records: a failure Tune retries from the last checkpoint, and a final one."""


def trial_dirname(trial_id: str) -> str:
    """Short trial folder names (Tune's default spells out every parameter)."""
    return f"trial_{trial_id}"


def trial_id_of(folder: Path) -> str:
    return folder.name.removeprefix("trial_")


def trial_folders(experiment_dir: Path) -> list[Path]:
    return sorted(p for p in experiment_dir.glob("trial_*") if p.is_dir())


# ---------------------------------------------------------------- JSON lines
def json_line(values: dict[str, Any]) -> str:
    """One result as a JSON line; numpy scalars become numbers, NaN and infinities stay JSON's
    non-standard NaN / Infinity (which Python's json reads back), anything else its str()."""
    return json.dumps(values, default=_plain) + "\n"


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy and torch scalars
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    """The lines of a JSON-lines file in order; a last line cut short by a kill is left out."""
    if not path.is_file():
        return []
    rows = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if number == len(lines):
                break  # the driver died while writing it
            raise MFError(f"{path}, line {number}: not a JSON result ({e})") from e
    return rows


def drop_cut_last_line(path: Path) -> None:
    """Cut off a last line a killed writer left unfinished, so that the next line starts a line of
    its own instead of gluing onto it (which would damage both)."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def append_json_line(path: Path, values: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    drop_cut_last_line(path)
    with path.open("a") as f:
        f.write(json_line(values))


# ---------------------------------------------------------------- results, params, events
def read_results(trial_dir: Path) -> list[dict[str, Any]]:
    """The trial's results in the order they arrived."""
    return read_json_lines(trial_dir / RESULT_FILE)


def read_params(trial_dir: Path) -> dict[str, Any] | None:
    path = trial_dir / PARAMS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def read_events(trial_dir: Path) -> list[dict[str, Any]]:
    return read_json_lines(trial_dir / EVENTS_FILE)


def has_ended(result: dict[str, Any]) -> bool:
    """Whether this result was a trial's last: Tune marks `done` on the one ASHA stopped it on
    (at max_epochs too), and a diverged trial ends on its own."""
    return bool(result.get(DONE)) or bool(result.get(DIVERGED))


def curve_of(results: list[dict[str, Any]], metric: str, time_attr: str) -> dict[int, float]:
    """Epoch -> metric of the finite values, the last report of an epoch winning (a retried trial
    repeats epochs, with the same values)."""
    curve: dict[int, float] = {}
    for r in results:
        value, step = r.get(metric), r.get(time_attr)
        if isinstance(value, (int, float)) and math.isfinite(value) and step is not None:
            curve[int(step)] = float(value)
    return curve


# ---------------------------------------------------------------- checkpoints
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

    The worker writes it where everything reads it (a shared file system on a cluster) instead of
    handing it to `tune.report`, which would copy it from a temp folder and hold the trial for a
    round trip with the driver at the rungs where most trials end. Not fsynced (it is written at
    every rung): if the machine crashes before the OS writes it out, it is left empty, and a retry
    of the trial starts from its first epoch.
    """
    path = trial_dir / f"checkpoint_epoch_{trainer.epoch:06d}" / CHECKPOINT_FILE
    trainer.save_checkpoint(path, fsync=False)
    empty_checkpoints(trial_dir, except_folder=path.parent.name)
    return path


def newest_checkpoint(trial_dir: Path) -> dict[str, Any] | None:
    """The state of the trial's checkpoint with the most epochs, or None.

    Chosen by the epoch inside, not by the folder's name. A checkpoint that cannot be read (cut
    short by a kill) is passed over, with a warning naming it.
    """
    from mf.training import read_checkpoint  # torch: only for a reader that loads a model

    newest = None
    for path in checkpoint_files(trial_dir):
        try:
            state = read_checkpoint(path)
        except MFError as e:
            print(f"warning: {e}; passed over", file=sys.stderr)
            continue
        if newest is None or state["epoch"] > newest["epoch"]:
            newest = state
    return newest
