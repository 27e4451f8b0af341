"""A live optuna-dashboard for the experiment's study, served on loopback while the run goes on.

`start_dashboard(location)` starts `python -m tune.extras.dashboard` (optuna-dashboard's public `wsgi()`
app under a threaded `wsgiref` server) and returns once it listens, with its URL; `stop()` ends
it. Why a process of its own: on a 2-core machine the driver is what limits a run, and the
dashboard's JSON for a study of a thousand trials costs real CPU; in the driver it would hold the
GIL. The process reads the study and never writes it: the storage is wrapped so that every write
is refused (`ReadOnlyStorage`), a journal file is opened as a plain `JournalStorage` reader (no
lock is taken to read, nothing is "mended": a last line the driver is still writing is skipped). It ends when `stop()` closes
its stdin, or when the driver dies and the pipe closes: it never outlives the run.
"""

from __future__ import annotations

import importlib.util
import os
import socketserver
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from mf.errors import MFError
from tune.settings import module_env

DEFAULT_PORT = 8080
LOOPBACK = "127.0.0.1"
_READY, _FAILED = "READY", "FAILED"


@dataclass
class Dashboard:
    """A running dashboard process; `url` opens the study list."""

    url: str
    port: int
    proc: subprocess.Popen

    def stop(self, timeout_s: float = 10.0) -> None:
        """End the server (close its stdin), killing it if it does not end within `timeout_s`."""
        if self.proc.poll() is not None:
            return
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Dashboard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_dashboard(
    location: str | os.PathLike[str],
    *,
    port: int = DEFAULT_PORT,
    host: str = LOOPBACK,
    log_path: Path | None = None,
    timeout_s: float = 60.0,
    echo: Any = print,
) -> Dashboard:
    """Serve the study at `location` (a journal file or an RDB URL) on `host:port` (`port=0`: any
    free port) and return once it listens; `echo` (print) gets one line with the URL.

    Raises MFError naming --dashboard when the study cannot be opened or the port is taken.
    """
    location = os.fspath(location)
    if importlib.util.find_spec("optuna_dashboard") is None:
        raise MFError(
            "--dashboard needs optuna-dashboard, which is not installed; pip install 'mf-tune[dashboard]'"
        )
    if "://" not in location and not Path(location).is_file():
        raise MFError(
            f"--dashboard: {location!r}: no such study journal; expected the experiment's optuna.journal"
        )
    if not 0 <= port <= 65535:
        raise MFError(f"--dashboard: port {port!r}; expected 0 (any free port) to 65535")
    log = (log_path or os.devnull, "a")
    with open(*log) as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tune.extras.dashboard", location, host, str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            env=module_env(),
            text=True,
        )
    assert proc.stdout is not None
    answer: list[str] = []
    reader = threading.Thread(
        target=lambda: answer.append(proc.stdout.readline() if proc.stdout else ""), daemon=True
    )
    reader.start()
    reader.join(timeout_s)
    line = answer[0].strip() if answer else ""
    if not line.startswith(_READY):
        proc.kill()
        proc.wait()
        why = line.removeprefix(_FAILED).strip() or f"no answer within {timeout_s:.0f} s"
        raise MFError(
            f"--dashboard: cannot serve {location} on {host}:{port} ({why}); try another port, or 0 for any free one"
        )
    bound = int(line.split()[1])
    url = f"http://{host}:{bound}/dashboard/"
    if echo:
        echo(f"dashboard: {url}")
    return Dashboard(url=url, port=bound, proc=proc)


# ----------------------------------------------------------------------- the server process


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a browser's open connection does not hold up the end


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request would fill the log


def _open(location: str) -> Any:
    """The study storage, opened to read only (ReadOnlyStorage)."""
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    if "://" in location:
        return ReadOnlyStorage(RDBStorage(location))
    return ReadOnlyStorage(JournalStorage(JournalFileBackend(location)))


def _read_only_storage() -> type:
    """`ReadOnlyStorage(storage)`: Optuna's public storage interface (BaseStorage) over `storage`,
    every read passed on, every write refused with PermissionError. optuna-dashboard's API can
    create and delete studies, and tell trials or write notes; on the live study of a run, none of
    that may happen, and the dashboard then answers such a request with an error."""
    from optuna.storages import BaseStorage

    def refuse(self: Any, *args: Any, **kwargs: Any) -> None:
        raise PermissionError("mf-tune's dashboard is read-only: the study belongs to the running experiment")

    def passed_on(name: str) -> Any:
        return lambda self, *args, **kwargs: getattr(self._inner, name)(*args, **kwargs)

    writes = {
        "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr", "create_new_trial",
        "set_trial_param", "set_trial_state_values", "set_trial_intermediate_value", "set_trial_user_attr",
        "set_trial_system_attr",
    }  # fmt: skip
    methods: dict[str, Any] = {
        name: refuse if name in writes else passed_on(name)
        for name in dir(BaseStorage)
        if not name.startswith("_") and callable(getattr(BaseStorage, name))
    }

    def __init__(self: Any, inner: Any) -> None:
        self._inner = inner

    return type("ReadOnlyStorage", (BaseStorage,), {"__init__": __init__, **methods})


ReadOnlyStorage = _read_only_storage()


def _serve(location: str, host: str, port: int) -> int:
    try:
        from optuna_dashboard import wsgi

        app = wsgi(_open(location))
        server = make_server(host, port, app, server_class=_Server, handler_class=_QuietHandler)
    except Exception as e:  # the storage, or the port: the parent reports the reason
        print(f"{_FAILED} {type(e).__name__}: {e}", flush=True)
        return 1
    print(f"{_READY} {server.server_address[1]}", flush=True)

    def stop_when_parent_goes() -> None:
        sys.stdin.read()  # EOF: stop() closed the pipe, or the parent died
        server.shutdown()

    threading.Thread(target=stop_when_parent_goes, daemon=True).start()
    server.serve_forever(poll_interval=0.2)
    server.server_close()
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(f"usage: {sys.executable} -m tune.extras.dashboard STUDY_LOCATION HOST PORT")
    sys.exit(_serve(sys.argv[1], sys.argv[2], int(sys.argv[3])))
