"""A private Ray whose driver is SIGKILLed leaves processes; they are found by their session folder
and ended, and nothing else is. Real Ray drivers in subprocesses; the processes are real too."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tune.search.ray_session import (
    SESSION_FILE,
    WATCHDOG_LOG,
    RaySession,
    end_leftovers,
    end_leftovers_in,
    end_processes,
    session_processes,
)

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="finds processes in /proc")

# A driver that starts its private Ray through start_private_ray, runs a task (so that workers
# exist), says READY with its session folder, and lives until its stdin closes.
DRIVER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import ray
    from tune.search.ray_session import start_private_ray
    session = start_private_ray(
        Path(sys.argv[1]), watchdog=sys.argv[2] == "1", num_cpus=1, log_to_driver=False
    )
    ray.get(ray.remote(lambda: 1).remote())
    print("READY", session.session_dir, flush=True)
    sys.stdin.read()
    """
)


class Driver:
    def __init__(self, experiment_dir: Path, *, watchdog: bool) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(experiment_dir), str(int(watchdog))],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        assert line.startswith("READY "), f"driver did not start: {line!r}"
        self.session_dir = line.split(maxsplit=1)[1].strip()

    def end(self) -> None:
        """A normal end (stdin closed), then make sure: end by pid what of its session is left."""
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        end_processes(session_processes(self.session_dir), grace_s=5)


@pytest.fixture
def drivers() -> Iterator[list[Driver]]:
    started: list[Driver] = []
    yield started
    for d in started:
        d.end()


def _pids(session_dir: str) -> set[int]:
    return {p.pid for p in session_processes(session_dir)}


def _wait_for(condition, timeout_s: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


@pytest.mark.slow
def test_leftovers_of_a_sigkilled_driver_are_ended_and_nothing_else(
    tmp_path: Path, drivers: list[Driver], capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    victim = Driver(runs / "crashed", watchdog=False)
    drivers.append(victim)
    bystander = Driver(runs / "running", watchdog=True)  # another experiment's Ray, still in use
    drivers.append(bystander)
    # Each session is recorded in its experiment folder, under the folder Ray really uses.
    record = RaySession.read(runs / "crashed" / SESSION_FILE)
    assert record is not None and record.session_dir == victim.session_dir
    assert record.driver_pid == victim.proc.pid and Path(record.session_dir, "logs").is_dir()
    bystander_pids = _pids(bystander.session_dir)
    # Its driver (which writes its own log there), GCS, raylet, agents, worker.
    assert bystander.proc.pid in bystander_pids and len(bystander_pids) >= 5

    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait()
    time.sleep(2)
    # What Ray 2.60 leaves after a SIGKILL: its agents at least (if this fails, Ray now cleans up
    # after itself, and tune/search/ray_session.py's docstring needs updating).
    left = session_processes(victim.session_dir)
    assert any("Agent" in p.name for p in left), left

    cleanups = end_leftovers_in(runs, grace_s=5)
    # The crashed experiment's leftovers were ended and named; the live one was left alone.
    by_dir = {c.session_dir: c for c in cleanups}
    assert {p.pid for p in by_dir[victim.session_dir].ended} >= {p.pid for p in left if "Agent" in p.name}
    assert by_dir[bystander.session_dir].driver_alive and not by_dir[bystander.session_dir].ended
    out = capsys.readouterr().out
    assert f"Ray session {victim.session_dir}: " in out and "DashboardAgent (pid" in out
    # Nothing of the crashed session is left, and its record is gone (a later call does nothing).
    assert not session_processes(victim.session_dir)
    assert not (runs / "crashed" / SESSION_FILE).exists() and end_leftovers(runs / "crashed") is None
    # Every process of the other session is still there, and its driver still works.
    assert bystander_pids <= _pids(bystander.session_dir) and bystander.proc.poll() is None

    # Now the other driver is killed too: with no further tune.run, its watchdog ends its session
    # within seconds and says so in the experiment folder.
    bystander.proc.send_signal(signal.SIGKILL)
    bystander.proc.wait()
    assert _wait_for(lambda: not session_processes(bystander.session_dir), 30)
    assert _wait_for(lambda: not (runs / "running" / SESSION_FILE).exists(), 5)
    assert "watchdog: ended" in (runs / "running" / WATCHDOG_LOG).read_text()


def _sleeper(
    *args: str, env: dict[str, str] | None = None, code: str = "", title: str | None = None
) -> subprocess.Popen:
    """A process whose command line carries `args`, running `code` then sleeping; with `title`, its
    argv[0] is that (as Ray titles its processes `ray::...`)."""
    script = f"import time\n{code}\ntime.sleep(120)"
    argv = [title or sys.executable, "-c", script, *args]
    return subprocess.Popen(argv, executable=sys.executable, env={**os.environ, **(env or {})})


def test_session_processes_are_chosen_by_session_folder_not_by_name(tmp_path: Path) -> None:
    session = tmp_path / "ray" / "session_2026-01-01_00-00-00_000000_1"
    (session / "logs").mkdir(parents=True)
    log = session / "logs" / "raylet.out"
    log.write_text("")
    writes = "f = open(__import__('os').environ['LOG'], 'a')"
    reads = "f = open(__import__('os').environ['LOG'])"
    named = _sleeper(f"--session-dir={session}", title="ray::IDLE")  # one of Ray's, naming the folder
    writer = _sleeper(env={"LOG": str(log)}, code=writes)  # the folder is not in its command line
    reader = _sleeper(env={"LOG": str(log)}, code=reads)  # a reader of the log
    other = _sleeper(f"--session-dir={session}2", title="ray::IDLE")  # another session, named alike
    stranger = _sleeper(title="ray::DashboardAgent")  # a Ray-like name, no session folder
    not_ray = _sleeper(f"--session-dir={session}")  # names the folder, but is not one of Ray's
    tail = subprocess.Popen(["tail", "-f", str(log)])  # a user following a log of the session
    procs = [named, writer, reader, other, stranger, not_ray, tail]
    try:
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        record = RaySession(
            session_dir=str(session),
            driver_pid=gone.pid,
            driver_start=0,
            started_at=time.time(),
            host=socket.gethostname(),
            boot_id=Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
        )
        exp = tmp_path / "exp"
        exp.mkdir()
        (exp / SESSION_FILE).write_text(json.dumps(record.__dict__))
        assert _wait_for(lambda: _pids(str(session)) == {named.pid, writer.pid}, 10)

        cleanup = end_leftovers(exp, grace_s=5, echo=None)
        # Exactly the process naming the folder and the one writing into it were ended.
        assert cleanup is not None and {p.pid for p in cleanup.ended} == {named.pid, writer.pid}
        assert named.wait(timeout=10) == -signal.SIGTERM and writer.wait(timeout=10) == -signal.SIGTERM
        # The readers (a `tail -f` among them), the other session, the Ray-named stranger and the
        # process that names the folder without being Ray's still run.
        assert all(p.poll() is None for p in (reader, other, stranger, not_ray, tail))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_no_record_means_nothing_to_do(tmp_path: Path) -> None:
    # An experiment that ran on a cluster (or never started a private Ray) has no record.
    assert end_leftovers(tmp_path) is None and end_leftovers_in(tmp_path) == []


@pytest.mark.parametrize("session_dir", ["", "/", "/tmp", "ray/session_2026-01-01_00-00-00_000000_1"])
def test_a_record_that_names_no_ray_session_folder_ends_nothing(tmp_path: Path, session_dir: str) -> None:
    # A damaged or hand-edited record: its "session folder" is in every command line, or none.
    bystander = _sleeper(f"--session-dir={session_dir or '/'}", title="ray::IDLE")
    try:
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        record = RaySession(
            session_dir=session_dir,
            driver_pid=gone.pid,
            driver_start=0,
            started_at=time.time(),
            host=socket.gethostname(),
            boot_id=Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
        )
        (tmp_path / SESSION_FILE).write_text(json.dumps(record.__dict__))
        cleanup = end_leftovers(tmp_path, grace_s=1, echo=None)
        assert cleanup is not None and cleanup.ended == []
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
