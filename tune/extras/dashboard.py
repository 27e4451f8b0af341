"""`--dashboard`: optuna-dashboard's app on the live study, in a process of its own (its JSON costs the
driver no GIL) that ends with the driver; unlike the `optuna-dashboard` command it cannot write."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
from wsgiref.simple_server import make_server

from mf.errors import MFError
from tune.record.study import exists, open_storage, read_only
from tune.settings import module_env


class Dashboard(subprocess.Popen):
    url = ""  # the study list; leaving `with` the process (or the driver's end) ends the server


def start_dashboard(location, *, port=8080, host="127.0.0.1", log_path=None, echo=print) -> Dashboard:
    """Serve the study at `location` (journal or RDB URL) on `host:port` (0: any free port); return once
    it listens. Raises MFError if optuna-dashboard is missing, the study is not there, or the port is taken."""
    if importlib.util.find_spec("optuna_dashboard") is None:
        raise MFError("--dashboard needs optuna-dashboard; pip install 'mf-tune[dashboard]'")
    if not exists(str(location)):
        raise MFError(f"--dashboard: {str(location)!r}: no such study journal or database")
    with open(log_path or os.devnull, "a") as log:
        argv = [sys.executable, "-m", __name__, str(location), host, str(port)]
        proc = Dashboard(argv, stdin=-1, stdout=-1, stderr=log, env=module_env(), text=True)
    answer = proc.stdout.readline().strip()  # the port it listens on, or why it could not
    if not answer.isdigit():
        raise MFError(f"--dashboard: cannot serve {location} on {host}:{port} ({answer}); try another port")
    proc.url = f"http://{host}:{answer}/dashboard/"
    echo and echo(f"dashboard: {proc.url}")
    return proc


if __name__ == "__main__":
    try:
        from optuna_dashboard import wsgi

        server = make_server(sys.argv[2], int(sys.argv[3]), wsgi(read_only(open_storage(sys.argv[1]))))
    except Exception as e:  # the storage, or the port: the driver reports it
        sys.exit(print(f"{type(e).__name__}: {e}", flush=True))
    print(server.server_address[1], flush=True)
    threading.Thread(target=lambda: (sys.stdin.read(), server.shutdown()), daemon=True).start()
    server.serve_forever()
