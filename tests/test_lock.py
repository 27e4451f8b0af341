"""One writer per experiment folder: a second driver or export is refused, naming the first."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.drivers import ENV, REPO, finish, start_run, study_of, trials_with_results, wait_until
from tune.lock import LOCK_FILE, ExperimentBusy, writer_lock

HOLD = "import sys, time; from pathlib import Path; from tune.lock import writer_lock\n" \
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
    (folder / "experiment.yaml").write_text("settings: {}\n")
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


@pytest.mark.slow
def test_a_second_driver_on_a_live_experiment_is_refused_and_the_first_finishes_unharmed(tmp_path: Path):
    first, folder = start_run(tmp_path, "--num-samples", "6", "--max-epochs", "4", "--confirm-top", "1")
    try:
        wait_until(lambda: trials_with_results(folder) >= 1, first, "a trial with results")
        second = subprocess.run(
            [sys.executable, "-m", "tune.run", "--resume", str(folder)],
            cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"being written by tune.run (pid {first.pid}" in second.stderr
        out = finish(first, timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, out[-3000:]
    trials = pd.read_csv(folder / "trials.csv")
    assert len(trials) == 6 and set(trials["outcome"]) <= {"COMPLETE", "PRUNED"}
    assert len(study_of(folder).trials) == 6
    assert all(t.state.is_finished() for t in study_of(folder).trials)
    assert (folder / "best" / "model.pt").is_file()
