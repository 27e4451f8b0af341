"""One writer per experiment folder: a second driver or export is refused, naming the first (a\nsecond real driver on a live run: tests/test_interrupts.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.drivers import ENV, REPO
from tune.record.lock import LOCK_FILE, ExperimentBusy, writer_lock

HOLD = "import sys, time; from pathlib import Path; from tune.record.lock import writer_lock\n" \
    "with writer_lock(Path(sys.argv[1]), 'a test holder'):\n" \
    "    print('held', flush=True); time.sleep(600)\n"  # fmt: skip


def hold_lock(folder: Path) -> subprocess.Popen:
    """Another process holding `folder`'s lock until it is killed."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], cwd=REPO, env=ENV, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_writer_is_refused_with_the_holder_named(tmp_path: Path):
    holder = hold_lock(tmp_path)
    try:
        busy = rf"a test holder \(pid {holder.pid} on .*\).*--resume"
        with pytest.raises(ExperimentBusy, match=busy), writer_lock(tmp_path, "tune.export"):
            pass
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_killed_holder_is_taken_by_the_next_writer(tmp_path: Path):
    holder = hold_lock(tmp_path)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with writer_lock(tmp_path, "tune.run"):
        assert f'"pid": {os.getpid()}' in (tmp_path / LOCK_FILE).read_text()


def test_tune_export_and_resume_refuse_a_folder_another_process_writes(tmp_path: Path):
    folder = tmp_path / "exp"
    folder.mkdir()
    (folder / "experiment.yaml").write_text("settings: {}\nbase_config: {}\n")
    holder = hold_lock(folder)
    try:
        for command in (["tune.export", str(folder)], ["tune.run", "--resume", str(folder)]):
            done = subprocess.run(
                [sys.executable, "-m", *command],
                cwd=REPO,
                env=ENV,
                capture_output=True,
                text=True,
                timeout=120,
            )
            # One line, exit 2, naming who holds it; no traceback.
            assert done.returncode == 2, done.stderr[-2000:]
            assert f"is being written by a test holder (pid {holder.pid}" in done.stderr
            assert "Traceback" not in done.stderr
    finally:
        holder.kill()
        holder.wait()
