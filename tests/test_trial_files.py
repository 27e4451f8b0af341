"""A trial's folder read back: its results as the driver logged them, its newest readable checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mf.config import TrainConfig
from mf.errors import MFError
from mf.training import Trainer
from tests.files import tiny_dataset, write_file
from tune.record.trial_files import (
    CHECKPOINT_FILE,
    checkpoint_files,
    drop_cut_last_line,
    has_ended,
    newest_checkpoint,
    read_results,
    save_trial_checkpoint,
)


def lines(*results: dict) -> str:
    return "".join(json.dumps(r) + "\n" for r in results)


def test_results_in_order_and_a_line_cut_short_by_a_kill_left_out(tmp_path: Path):
    write_file(tmp_path / "result.json", lines({"epoch": 1}, {"epoch": 2}) + '{"epoch": 3, "val_')
    assert [r["epoch"] for r in read_results(tmp_path)] == [1, 2]
    assert read_results(tmp_path / "no-such-trial") == []


def test_a_line_cut_short_is_dropped_before_more_results_are_appended(tmp_path: Path):
    path = write_file(tmp_path / "result.json", lines({"epoch": 1}) + '{"epoch": 2, "val_')
    drop_cut_last_line(path)
    with path.open("a") as f:
        f.write(lines({"epoch": 2}))
    assert [r["epoch"] for r in read_results(tmp_path)] == [1, 2]
    drop_cut_last_line(tmp_path / "no-such-file.json")  # nothing to do


def test_a_damaged_line_before_the_last_is_an_error_naming_file_and_line(tmp_path: Path):
    write_file(tmp_path / "result.json", lines({"epoch": 1}) + "garbage\n" + lines({"epoch": 3}))
    with pytest.raises(MFError, match=r"result\.json, line 2: not a JSON result"):
        read_results(tmp_path)


def test_a_trial_has_ended_when_stopped_or_diverged():
    assert has_ended({"epoch": 2, "done": True})  # Tune marks the result ASHA stopped it on
    assert has_ended({"epoch": 2, "diverged": 1})
    assert not has_ended({"epoch": 2, "done": False, "diverged": 0})


def test_newest_checkpoint_is_the_one_with_most_epochs_and_a_damaged_one_is_passed_over(tmp_path: Path):
    trainer = Trainer(
        TrainConfig(device="cpu", threads=1, emb_dim=4, batch_size=32, epochs=5), tiny_dataset()
    )
    trainer.run_epoch()
    trainer.save_checkpoint(tmp_path / "checkpoint_000007" / CHECKPOINT_FILE)
    trainer.run_epoch()
    # In an experiment from before trials saved their own checkpoints, Tune numbered the folders,
    # from its snapshot after a resume: the newest state can sit in a lower-numbered folder.
    trainer.save_checkpoint(tmp_path / "checkpoint_000002" / CHECKPOINT_FILE)
    good = (tmp_path / "checkpoint_000002" / CHECKPOINT_FILE).read_bytes()
    write_file(tmp_path / "checkpoint_000009" / CHECKPOINT_FILE, good[: len(good) // 2])  # copy cut short
    assert newest_checkpoint(tmp_path)["epoch"] == 2
    assert newest_checkpoint(tmp_path / "no-such-trial") is None


def test_a_trial_keeps_only_its_newest_checkpoint(tmp_path: Path):
    trainer = Trainer(
        TrainConfig(device="cpu", threads=1, emb_dim=4, batch_size=32, epochs=5), tiny_dataset()
    )
    trainer.run_epoch()
    first = save_trial_checkpoint(trainer, tmp_path)
    trainer.run_epoch()
    second = save_trial_checkpoint(trainer, tmp_path)
    # One folder per checkpointed epoch; the older state file is deleted once the newer is written.
    assert (first.parent.name, second.parent.name) == ("checkpoint_epoch_000001", "checkpoint_epoch_000002")
    assert checkpoint_files(tmp_path) == [second]
    assert newest_checkpoint(tmp_path)["epoch"] == 2
    # Written through a temp file renamed into place: nothing else is left beside it.
    assert [p.name for p in second.parent.iterdir()] == [CHECKPOINT_FILE]
