"""optuna-dashboard on a study that a real Optuna process is writing, read back over HTTP from the
dashboard's own JSON API (/api/studies, /api/studies/<id>); no mocks."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from mf.errors import MFError
from tune.extras.dashboard import start_dashboard

ROOT = Path(__file__).resolve().parents[1]

# A driver's stand-in: makes the study "live" in a journal file and adds a trial every 0.1 s
# (x suggested, x reported at step 1, value x**2) until its stdin closes; READY after the first.
WRITER = textwrap.dedent(
    """
    import sys, threading, time
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    study = optuna.create_study(
        study_name="live", storage=JournalStorage(JournalFileBackend(sys.argv[1])), direction="minimize"
    )
    while not stop.is_set():
        trial = study.ask()
        x = trial.suggest_float("x", 0.0, 10.0)
        trial.report(x, step=1)
        study.tell(trial, x * x)
        if len(study.trials) == 1:
            print("READY", flush=True)
        time.sleep(0.1)
    """
)


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen]]:
    journal = tmp_path / "optuna.journal"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(journal)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
    yield journal, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def _trials(base: str) -> tuple[int, list[dict[str, Any]]]:
    (study,) = _get(f"{base}/api/studies")["study_summaries"]
    assert study["study_name"] == "live"
    return study["study_id"], _get(f"{base}/api/studies/{study['study_id']}")["trials"]


def _poll(get: Any, done: Any, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    value = get()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.5)
        value = get()
    return value


def _stopped(dashboard_port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", dashboard_port), timeout=1).close()
        return False
    except OSError:
        return True


def test_dashboard_serves_a_study_while_it_is_written(
    writer: tuple[Path, subprocess.Popen], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal, proc = writer
    with start_dashboard(journal, port=0, log_path=tmp_path / "dashboard.log") as dashboard:
        # It printed its URL, on loopback, and the page is there.
        assert capsys.readouterr().out == f"dashboard: {dashboard.url}\n"
        assert dashboard.url.startswith("http://127.0.0.1:") and dashboard.url.endswith("/dashboard/")
        with urllib.request.urlopen(dashboard.url, timeout=30) as page:
            assert page.status == 200 and b"<html" in page.read().lower()
        base = dashboard.url.removesuffix("/dashboard/")
        _, first = _trials(base)
        # The study grows while the dashboard serves it: it reads the journal live (its own cache
        # of a small study's trials lasts 2 s).
        later = _poll(lambda: _trials(base)[1], lambda trials: len(trials) > len(first), 20)
        study_id, _ = _trials(base)
        assert len(first) >= 1 and len(later) > len(first)
        # Each trial as written: its param, its value x**2, its intermediate value at step 1.
        for t in later:
            if t["state"] != "Complete":
                continue
            (param,) = t["params"]
            x = float(param["param_external_value"])
            assert param["name"] == "x" and t["values"] == [pytest.approx(x * x)]
            assert t["intermediate_values"] == [{"step": 1, "value": pytest.approx(x)}]

        # Once the writer has stopped, reading changes nothing in the journal (no mending, no lock).
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)
        before = hashlib.sha256(journal.read_bytes()).hexdigest()
        study = optuna.load_study(study_name="live", storage=JournalStorage(JournalFileBackend(str(journal))))
        # In the end it shows every trial the study holds, as Optuna itself reads them.
        final = _poll(lambda: _trials(base)[1], lambda trials: len(trials) == len(study.trials), 20)
        assert [t["number"] for t in final] == [t.number for t in study.trials]
        assert hashlib.sha256(journal.read_bytes()).hexdigest() == before
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("optuna.journal")) == [
            "optuna.journal"
        ]
        assert _get(f"{base}/api/studies/{study_id}")["trials"][-1]["number"] == len(final) - 1
        # Its API cannot write the live study: deleting it, or telling a trial, is refused.
        for method, path, body in [
            ("DELETE", f"/api/studies/{study_id}", None),
            ("POST", "/api/studies", {"study_name": "another", "directions": ["minimize"]}),
            ("POST", f"/api/trials/{final[-1]['trial_id']}/user-attrs", {"user_attrs": {"a": 1}}),
        ]:
            request = urllib.request.Request(
                base + path,
                method=method,
                data=None if body is None else json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )
            with pytest.raises(urllib.error.HTTPError):
                urllib.request.urlopen(request, timeout=30)
        assert hashlib.sha256(journal.read_bytes()).hexdigest() == before
        assert len(optuna.get_all_study_summaries(JournalStorage(JournalFileBackend(str(journal))))) == 1
    # Leaving it ends the server: the port no longer answers and the process has exited.
    assert dashboard.poll() == 0 and _stopped(int(base.rsplit(":", 1)[1]))


def test_dashboard_ends_when_its_driver_dies(writer: tuple[Path, subprocess.Popen], tmp_path: Path) -> None:
    journal, _ = writer
    # A driver that starts the dashboard, says where, and is then SIGKILLed.
    driver = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from tune.extras.dashboard import start_dashboard; "
            'd = start_dashboard(sys.argv[1], port=0, echo=None); print(d.url.split(":")[2].split("/")[0], d.pid, flush=True); time.sleep(600)',
            str(journal),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert driver.stdout is not None
    port, pid = (int(v) for v in driver.stdout.readline().split())
    assert _get(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    # The dashboard notices its pipe close and ends by itself: nothing outlives the run.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not _stopped(port):
        time.sleep(0.2)
    assert _stopped(port)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists() and _state(pid) != "Z":
        time.sleep(0.2)
    assert not Path(f"/proc/{pid}").exists() or _state(pid) == "Z"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def test_taken_port_and_missing_journal_are_refused(tmp_path: Path) -> None:
    journal = tmp_path / "optuna.journal"
    # No journal: refused before any process starts, and no file is made.
    with pytest.raises(MFError, match="no such study journal"):
        start_dashboard(journal)
    assert not journal.exists()
    journal.write_text("")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # A port in use: one line naming the port, the reason and the fix.
        with pytest.raises(MFError, match=rf"127\.0\.0\.1:{port} \(OSError: .*in use\); try another port"):
            start_dashboard(journal, port=port, echo=None)


def test_dashboard_serves_an_rdb_study_too(tmp_path: Path) -> None:
    # --study-storage may be an RDB URL: the dashboard opens it as optuna-dashboard does.
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="live", storage=url)
    study.optimize(lambda t: t.suggest_float("x", 0, 1) ** 2, n_trials=3)
    with start_dashboard(url, port=0, echo=None) as dashboard:
        _, trials = _trials(dashboard.url.removesuffix("/dashboard/"))
    assert [t["values"] for t in trials] == [[pytest.approx(t.value)] for t in study.trials]
