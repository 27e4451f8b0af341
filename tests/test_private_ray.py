"""A run's private Ray ends with its driver, however the driver ends: after a SIGKILL every process
of the session ends by itself, Ray's two agents last (they wait about a minute on the dead GCS to
say so). mf-tune kills no process of its own for this; if a Ray release leaves processes behind
for good, this test fails and a reaper is needed again (docs/decisions.md)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROC = Path("/proc")

# A driver that starts its private Ray as `tune.run` does, runs a task (so that a worker exists),
# says READY and lives until it is killed.
DRIVER = textwrap.dedent(
    """
    import sys
    import ray
    from tune.extras.progress import ray_output
    from tune.search.cluster import connect_ray
    from tune.settings import ExperimentSettings
    connect_ray(ExperimentSettings(storage_path=sys.argv[1]), ray_output(verbose=False))
    ray.get(ray.remote(lambda: 1).remote())
    print("READY", flush=True)
    sys.stdin.read()
    """
)


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a live process; None if it is gone or a zombie."""
    try:
        fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else (int(fields[1]), int(fields[19]))


def _descendants(root: int) -> dict[int, tuple[int, str]]:
    """Every live process below `root`: pid -> (start time, its command's first word)."""
    parents = {int(p.name): _stat(int(p.name)) for p in PROC.iterdir() if p.name.isdigit()}
    found: dict[int, tuple[int, str]] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, stat in parents.items():
            if stat is not None and stat[0] == parent and pid not in found:
                name = (PROC / str(pid) / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
                found[pid] = (stat[1], name)
                frontier.append(pid)
    return found


@pytest.mark.slow
@pytest.mark.skipif(not PROC.joinpath("self/stat").exists(), reason="reads processes from /proc")
def test_a_sigkilled_drivers_private_ray_ends_by_itself(tmp_path: Path) -> None:
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(tmp_path / "runs")],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert driver.stdout is not None
    assert driver.stdout.readline().startswith("ray: started a private local Ray at ")
    assert driver.stdout.readline() == "READY\n"
    session = _descendants(driver.pid)
    # The Ray it started: GCS, raylet, the two agents, a worker, ...
    assert {"ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= {name for _, name in session.values()}
    assert len(session) >= 5, session

    driver.send_signal(signal.SIGKILL)
    driver.wait()
    deadline = time.monotonic() + 150
    left = session
    while left and time.monotonic() < deadline:
        time.sleep(1)
        left = {pid: p for pid, p in session.items() if (_stat(pid) or (0, None))[1] == p[0]}
    assert not left, f"Ray processes still running 150 s after their driver was killed: {left}"
