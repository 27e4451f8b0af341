"""End to end: `ray job submit` a small `python -m tune.run` to a real Ray head on this machine.

The head is started the way docs/cluster.md describes, with token authentication on
(`RAY_AUTH_MODE=token` and a token of its own in `RAY_AUTH_TOKEN_PATH`), on free ports and in a
`--temp-dir` of its own, so that it neither meets nor is found by another Ray on the machine.
`ray stop` would end every Ray process on the machine (it matches process names and takes no
address or temp dir), so the fixture ends only the processes of this head.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.files import ml_latest_small

ROOT = Path(__file__).resolve().parents[1]
DATA = ml_latest_small()
# The venv's bin (not resolved: that would be the base interpreter): its `ray`, and its `python`
# for the job, which runs whatever `python` is first on the head's PATH.
VENV_BIN = Path(sys.executable).parent
# Kept out of the working_dir upload (Ray also reads .gitignore, and skips .git and .venv itself).
EXCLUDES = [".git", ".venv", "runs", "out", "__pycache__", ".pytest_cache", ".ruff_cache", "*.egg-info"]
START_TIMEOUT_S = 120
JOB_TIMEOUT_S = 300
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc").is_dir(), reason="stopping only our Ray processes reads /proc"),
]


@dataclass(frozen=True)
class Head:
    url: str  # the job API (the dashboard), on loopback
    env: dict[str, str]  # what `ray` commands against this head need: PATH, RAY_AUTH_MODE, the token's path
    token: str
    temp_dir: Path  # the head's folder: its --temp-dir is temp_dir / "ray"
    gcs_port: int  # the cluster's address is <this host>:gcs_port


def free_ports(n: int) -> list[int]:
    """n ports free now (all held open at once, so they differ)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def processes() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, state, command line) for every process, from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = (
                Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            )
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # gone meanwhile
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        table[int(entry)] = (int(ppid), state, cmdline)
    return table


def head_processes(temp_dir: Path) -> dict[int, str]:
    """The head's processes: those naming its temp dir, and all their descendants (workers, the job)."""
    table = processes()
    mark = f"{temp_dir}/"
    ours = {pid for pid, (_, _, cmd) in table.items() if mark in cmd and pid != os.getpid()}
    while True:
        children = {pid for pid, (ppid, _, _) in table.items() if ppid in ours} - ours
        if not children:
            return {pid: table[pid][2] for pid in ours}
        ours |= children


def stop_head(temp_dir: Path, *, grace_s: float = 5.0) -> list[str]:
    """End the head as `ray stop` would (raylet first, GCS last; SIGTERM, then SIGKILL), but only it.

    Returns the command lines of processes that needed SIGKILL.
    """
    ours = head_processes(temp_dir)  # the whole tree now: children outlive a dead parent
    raylet = {p for p, cmd in ours.items() if "/raylet/raylet " in cmd}
    gcs = {p for p, cmd in ours.items() if "/gcs/gcs_server " in cmd}
    killed = []
    for bucket in (raylet, set(ours) - raylet - gcs, gcs):
        for pid in bucket:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while (alive := _alive(bucket)) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed.append(ours[pid][:120])
    return killed


def _alive(pids: set[int]) -> set[int]:
    table = processes()
    return {p for p in pids if p in table and table[p][1] != "Z"}


@pytest.fixture(scope="module")
def head() -> Iterator[Head]:
    # A short folder: Ray's socket paths under it must stay within 107 characters.
    temp_dir = Path(tempfile.mkdtemp(prefix="rayjob-", dir="/tmp"))
    token = secrets.token_hex(32)
    token_file = temp_dir / "auth_token"
    token_file.write_text(token)
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_file),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN"):
        env.pop(var, None)  # RAY_AUTH_TOKEN would win over RAY_AUTH_TOKEN_PATH
    gcs, dashboard, client, agent, agent_grpc, runtime_env, metrics, node_manager, object_manager = (
        free_ports(9)
    )
    start = [
        "ray", "start", "--head",
        f"--port={gcs}",
        f"--dashboard-port={dashboard}",
        "--dashboard-host=127.0.0.1",
        "--include-dashboard=true",
        "--num-cpus=2",
        f"--temp-dir={temp_dir / 'ray'}",
        # Every port Ray would otherwise take at a fixed default, which another Ray here may hold.
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={runtime_env}",
        f"--metrics-export-port={metrics}",
        f"--node-manager-port={node_manager}",
        f"--object-manager-port={object_manager}",
        "--disable-usage-stats",
    ]  # fmt: skip
    try:
        started = subprocess.run(
            start, env=env, capture_output=True, text=True, timeout=START_TIMEOUT_S, start_new_session=True
        )
        if started.returncode != 0:
            pytest.fail(f"`ray start` exited {started.returncode}:\n{started.stdout}\n{started.stderr}")
        yield Head(url=f"http://127.0.0.1:{dashboard}", env=env, token=token, temp_dir=temp_dir, gcs_port=gcs)
    finally:
        killed = stop_head(temp_dir)
        leftover = head_processes(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        if killed:
            print(f"needed SIGKILL: {killed}")
        assert not leftover, f"Ray processes left running: {leftover}"


def http_status(url: str, token: str | None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def test_job_api_refuses_callers_without_the_token(head: Head):
    jobs = f"{head.url}/api/jobs/"
    # Token authentication is on: no token is 401, a wrong one 403, the head's token is let in.
    assert http_status(jobs, None) == 401
    assert http_status(jobs, secrets.token_hex(32)) == 403
    assert http_status(jobs, head.token) == 200


def test_job_submit_runs_tune_and_exports_the_best(head: Head, tmp_path: Path):
    from ray.job_submission import JobSubmissionClient

    runs = tmp_path / "runs"
    job_id = f"mf-tune-{uuid.uuid4().hex[:8]}"
    submit = [
        "ray", "job", "submit",
        "--address", head.url,
        "--submission-id", job_id,
        "--no-wait",
        "--working-dir", str(ROOT),
        "--runtime-env-json", json.dumps({"excludes": EXCLUDES}),
        "--",
        "python", "-m", "tune.run", "--smoke-test",
        "--data", str(DATA),
        "--storage-path", str(runs),
        "--name", "job",
        "--address", "auto",
    ]  # fmt: skip
    submitted = subprocess.run(submit, cwd=ROOT, env=head.env, capture_output=True, text=True, timeout=120)
    output = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, f"`ray job submit` exited {submitted.returncode}:\n{output}"
    # The SDK takes the token as a header (the CLI above read it from RAY_AUTH_TOKEN_PATH).
    client = JobSubmissionClient(head.url, headers={"Authorization": f"Bearer {head.token}"})
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while (status := client.get_job_status(job_id).value) not in TERMINAL and time.monotonic() < deadline:
        time.sleep(1.0)
    ended = f"ended {status}" if status in TERMINAL else f"still {status} after {JOB_TIMEOUT_S} s, stopped"
    if status not in TERMINAL:
        client.stop_job(job_id)
    logs = client.get_job_logs(job_id)
    assert status == "SUCCEEDED", f"job {job_id} {ended}; its logs:\n{logs}"
    # The working dir went up small, far below Ray's 100 MiB cap: the code, no .venv, runs or caches.
    package = client.get_job_info(job_id).runtime_env["working_dir"]  # gcs://_ray_pkg_<hash>.zip
    unpacked = head.temp_dir / "ray" / "session_latest" / "runtime_resources" / "working_dir_files"
    unpacked = unpacked / Path(package).stem
    files = [p for p in unpacked.rglob("*") if p.is_file()]
    assert (unpacked / "tune" / "run.py").is_file(), f"{package} unpacked: {sorted(map(str, files))[:20]}"
    uploaded = {part for p in files for part in p.relative_to(unpacked).parts}
    assert not uploaded & {".git", ".venv", "runs", ".pytest_cache"}, sorted(uploaded)
    assert sum(p.stat().st_size for p in files) < 5 * 2**20, f"{package} holds {len(files)} files"
    # The driver joined this cluster (the job's RAY_ADDRESS) rather than starting a Ray of its own.
    assert re.search(rf"^ray: joined the Ray cluster at [\w.]+:{head.gcs_port}: ", logs, re.MULTILINE), logs

    # The export is where --storage-path and --name put it: a trial of trials.csv, the one whose
    # fresh-seed runs confirmed best (the confirmation's own tests are in test_tune_experiment.py).
    experiment = runs / "job"
    best = experiment / "best"
    assert {p.name for p in best.iterdir()} >= {"config.yaml", "metrics.json", "model.pt"}, logs
    metrics = json.loads((best / "metrics.json").read_text())
    trials = pd.read_csv(experiment / "trials.csv")
    assert len(trials) == 4  # the smoke test's trials
    trials = trials.set_index("trial_id")
    assert metrics["search_best_val_mse"] == pytest.approx(trials.loc[metrics["trial_id"], "best_val_mse"])
    # The chosen run (1 seed) is the confirmation's; the export is its refit on train + validation.
    assert metrics["train_only"]["val_mse"] == pytest.approx(
        metrics["confirmation"]["val_mse_mean"], abs=1e-6
    )
    assert metrics["trained_on"] == ["train", "val"]
    assert yaml.safe_load((best / "config.yaml").read_text())["epochs"] == metrics["epoch"]
