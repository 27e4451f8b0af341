"""Ctrl-C, SIGTERM and a crashed worker during a real tune.run: what was done is kept and can be
resumed, and the run says how."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.drivers import finish, resume, start_run, study_of, tasks_running, trials_with_results, wait_until
from tune.export.confirmation import CONFIRM_DIR, SUMMARY_FILE


@pytest.mark.slow
def test_ctrl_c_during_the_search_stops_it_skips_the_export_and_resume_finishes_it(tmp_path: Path):
    driver, folder = start_run(tmp_path, "--num-samples", "10", "--max-epochs", "6", "--confirm-top", "1")
    try:
        wait_until(lambda: trials_with_results(folder) >= 2, driver, "two trials with results")
        # A second driver on the live experiment is refused, naming the first; the first goes on.
        second = resume(folder)
        assert second.returncode == 2, second.stderr[-2000:]
        assert (
            f"being written by tune.run (pid {driver.pid}" in second.stderr
            and "Traceback" not in second.stderr
        )
        assert driver.poll() is None
        driver.send_signal(signal.SIGINT)
        out = finish(driver)
    finally:
        driver.kill()
    assert driver.returncode == 130, out[-3000:]
    assert "interrupted during the search" in out and f"--resume {folder}" in out
    assert "Traceback" not in out
    # Neither confirmed nor exported: the search had not ended.
    assert not (folder / CONFIRM_DIR / SUMMARY_FILE).exists()
    assert not (folder / "best").exists()

    resumed = resume(folder)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert len(pd.read_csv(folder / "trials.csv")) == 10
    study = study_of(folder)
    assert len(study.trials) == 10 and all(t.state.is_finished() for t in study.trials)
    assert len({t.user_attrs["ray_trial_id"] for t in study.trials}) == 10  # none run twice
    assert (folder / "best" / "model.pt").is_file()


@pytest.mark.slow
@pytest.mark.parametrize(
    "signals",
    [
        [signal.SIGTERM],  # as `ray job stop` or a batch scheduler sends it
        [signal.SIGINT, signal.SIGINT],  # an impatient Ctrl-C, twice
    ],
    ids=["sigterm", "ctrl-c-twice"],
)
def test_a_stop_during_the_confirmation_keeps_its_finished_runs_for_the_resume(tmp_path: Path, signals):
    driver, folder = start_run(
        tmp_path, "--num-samples", "3", "--max-epochs", "4", "--confirm-top", "1", "--confirm-seeds", "3",
        "--max-concurrent", "1",
    )  # fmt: skip
    try:
        wait_until(lambda: tasks_running("confirmation_run"), driver, "the confirmation")
        for sig in signals:
            driver.send_signal(sig)
            time.sleep(0.05)
        out = finish(driver)
    finally:
        driver.kill()
    assert driver.returncode == 130, out[-3000:]
    # A second signal may land while the first is being handled (stopped at once) or after it.
    said = "interrupted during the confirmation" in out or "stopped at once" in out
    assert said and "Traceback" not in out
    assert not (folder / CONFIRM_DIR / SUMMARY_FILE).exists()
    assert not (folder / "best").exists()
    # No confirmation task is left running once the driver has gone.
    time.sleep(2)
    assert not tasks_running("confirmation_run")

    resumed = resume(folder)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert (folder / CONFIRM_DIR / SUMMARY_FILE).is_file()
    assert (folder / "best" / "model.pt").is_file()


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_without_a_traceback(tmp_path: Path):
    driver, folder = start_run(tmp_path, "--num-samples", "20", "--max-epochs", "6")
    try:
        wait_until(lambda: trials_with_results(folder) >= 1, driver, "a trial with results")
        driver.send_signal(signal.SIGINT)
        time.sleep(0.05)
        driver.send_signal(signal.SIGINT)
        out = finish(driver, timeout=60)
    finally:
        driver.kill()
    assert driver.returncode == 130, out[-3000:]
    # The second lands in Tune's last save (stopped at once) or, when that save was quicker than
    # 50 ms, just after it (the first one's message); either way one line and no traceback.
    assert ("stopped at once" in out or "interrupted during the search" in out) and "Traceback" not in out
    assert not (folder / "best").exists()
    # The study is readable: every trial in it is one Tune started.
    assert study_of(folder).trials


@pytest.mark.slow
def test_a_confirmation_worker_that_keeps_crashing_is_reported_and_the_run_still_exports(tmp_path: Path):
    driver, folder = start_run(
        tmp_path, "--num-samples", "3", "--max-epochs", "4", "--confirm-top", "1", "--confirm-seeds", "1",
    )  # fmt: skip
    try:
        wait_until(lambda: tasks_running("confirmation_run"), driver, "the confirmation")
        # Kill every worker that runs a confirmation task, as an out-of-memory killer would, until
        # Ray gives up retrying them and the driver goes on.
        while driver.poll() is None:
            for pid in tasks_running("confirmation_run"):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        out = finish(driver)
    finally:
        driver.kill()
    assert driver.returncode == 0, out[-3000:]
    assert "confirmation: trial" in out and "failed (" in out
    assert "a configuration missing a run is not confirmed" in out
    assert len(pd.read_csv(folder / "trials.csv")) == 3
    assert (folder / "best" / "model.pt").is_file()
