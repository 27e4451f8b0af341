"""A real `python -m tune.run` driver in a process of its own, for tests that signal, kill or
race it, and what such tests look at."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna

from tests.files import ml_latest_small
from tune.record.study import JOURNAL_FILE, open_storage

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
SPACE = "params:\n  lr: {type: float, low: 1.0e-3, high: 3.0e-2, log: true}\n"


def start_run(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, Path]:
    (tmp_path / "space.yaml").write_text(SPACE)
    args = [
        sys.executable, "-m", "tune.run",
        "--data", str(ml_latest_small()),
        "--storage-path", str(tmp_path / "runs"),
        "--name", "stopped",
        "--space", str(tmp_path / "space.yaml"),
        "--emb-dim", "256",  # epochs long enough for a signal to land mid-run
        "--seed", "3",
        *extra,
    ]  # fmt: skip
    log = (tmp_path / "driver.log").open("w")  # a file, not a pipe: nobody reads it while the run goes on
    driver = subprocess.Popen(args, cwd=REPO, env=ENV, stdout=log, stderr=subprocess.STDOUT, text=True)
    driver.log_path = log.name
    return driver, tmp_path / "runs" / "stopped"


def wait_until(condition, driver: subprocess.Popen, what: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert driver.poll() is None, f"the run ended before {what}:\n" + output(driver)[-3000:]
        assert time.monotonic() < deadline, f"never reached: {what}"
        time.sleep(0.2)


def tasks_running(name: str) -> list[int]:
    """The pids of this machine's Ray workers running the task `name` (Ray titles such a process
    `ray::name`, which /proc/<pid>/cmdline shows)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().startswith(f"ray::{name}".encode()):
                found.append(int(cmdline.parent.name))
        except OSError:  # gone meanwhile
            pass
    return found


def trials_with_results(folder: Path) -> int:
    return sum(1 for f in folder.glob("trial_*/result.json") if f.stat().st_size > 0)


def output(driver: subprocess.Popen) -> str:
    return Path(driver.log_path).read_text()


def finish(driver: subprocess.Popen, timeout: float = 120.0) -> str:
    driver.wait(timeout=timeout)
    return output(driver)


def resume(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tune.run", "--resume", str(folder)],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def study_of(folder: Path) -> optuna.Study:
    return optuna.load_study(study_name="stopped", storage=open_storage(str(folder / JOURNAL_FILE)))
