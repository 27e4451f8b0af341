"""A private local Ray that leaves nothing behind, however its driver ends.

Measured with Ray 2.60 (a driver that ran `ray.init(address="local", include_dashboard=False)` and a
task): after a normal exit, SIGTERM or SIGINT every process of the session ends within seconds. After
SIGKILL or SIGHUP of the driver, Ray's `DashboardAgent` and `RuntimeEnvAgent` stay alive for good,
orphaned (the workers end by themselves within seconds, the GCS and raylet at once). So:

- `start_private_ray` starts the Ray and records its session (folder, driver pid and start time, host,
  boot) in `<experiment>/ray_session.json`; with `watchdog=True` a small process outside the driver's
  process group waits for the driver to end and then ends whatever of that session is left.
- `end_leftovers` (the next `tune.run` or `--resume`) does the same from the record, should the
  watchdog have been killed too, and says what it ended.

Only a recorded folder that is a Ray session folder (named as Ray names them, holding `logs/`) is
looked at. A process belongs to the session when it is one of Ray's (a program or script of the
installed ray package, or a process Ray titled `ray::...`) and names the session folder in its
command line, or when it holds a file in that folder open for writing (/proc/<pid>/fd, fdinfo):
Ray's agents and workers rewrite their command lines (`ray::DashboardAgent`, `ray::IDLE`), but keep
writing their logs in `<session>/logs/`. A `tail -f` or `less` of such a log names the folder but is
not Ray's, and only reads: it is not part of the session. Nothing is touched while the recorded
driver still runs, on another host or after a reboot, so a Ray this experiment did not start
(another run's, a `ray start --head` cluster) is never touched. Linux only (/proc); elsewhere
nothing is found, and nothing ended.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mf.atomic import write_json
from tune.settings import module_env

SESSION_FILE = "ray_session.json"
"""In the experiment folder: the private Ray session the experiment's driver started."""
WATCHDOG_LOG = "ray_session.log"
"""In the experiment folder: what the watchdog ended, if anything."""
PROC = Path("/proc")


@dataclass(frozen=True)
class RaySession:
    """A private Ray session as recorded when it started: enough to find its processes later and
    to tell whether the driver that started it still runs (a pid alone may have been reused)."""

    session_dir: str
    driver_pid: int
    driver_start: int | None
    """The driver's start time in clock ticks after boot (/proc/<pid>/stat, field 22)."""
    started_at: float
    host: str
    boot_id: str

    @classmethod
    def read(cls, path: Path) -> RaySession | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def driver_alive(self) -> bool:
        return self.boot_id == _boot_id() and _start_time(self.driver_pid) == self.driver_start


@dataclass(frozen=True)
class SessionProcess:
    pid: int
    name: str
    """argv[0] as the process shows it (for messages only: never used to choose a process)."""
    start: int | None


@dataclass
class Cleanup:
    """What `end_leftovers` found for one recorded session."""

    session_dir: str
    ended: list[SessionProcess] = field(default_factory=list)
    driver_alive: bool = False
    """The recorded driver still runs: its session was left alone."""

    def message(self) -> str:
        if self.driver_alive:
            return f"ray session {self.session_dir}: its driver still runs; left alone"
        names = ", ".join(f"{p.name} (pid {p.pid})" for p in self.ended)
        return f"ended {len(self.ended)} processes left by an earlier run's Ray session {self.session_dir}: {names}"


# ------------------------------------------------------------------------- starting and recording


def start_private_ray(experiment_dir: Path, *, watchdog: bool = True, **init_kwargs: Any) -> RaySession:
    """`ray.init(address="local", include_dashboard=False, **init_kwargs)`, recorded in
    `<experiment_dir>/ray_session.json` (the folder is created). With `watchdog`, a process that
    outlives a killed driver ends the session's leftovers a few seconds after the driver ends."""
    import ray

    context = ray.init(address="local", include_dashboard=False, **init_kwargs)
    session = RaySession(
        session_dir=session_dir_of(context),
        driver_pid=os.getpid(),
        driver_start=_start_time(os.getpid()),
        started_at=time.time(),
        host=socket.gethostname(),
        boot_id=_boot_id(),
    )
    experiment_dir.mkdir(parents=True, exist_ok=True)
    write_json(experiment_dir / SESSION_FILE, asdict(session))
    if watchdog:
        start_watchdog(experiment_dir)
    return session


def session_dir_of(context: Any) -> str:
    """The session folder of the Ray that `ray.init` just started, from what it returned.

    `RayContext.address_info["session_dir"]` is what `ray.init` documents it returns ("address
    information about the started processes"); its last part is checked against the public
    `get_session_name()`, so that a change in either shows here (tests/test_ray_session.py).
    """
    import ray

    session_dir = str(context.address_info["session_dir"])
    name = ray.get_runtime_context().get_session_name()
    if Path(session_dir).name != name:
        raise RuntimeError(
            f"ray.init returned session_dir {session_dir!r}, but the session is named {name!r}"
        )
    return session_dir


def start_watchdog(experiment_dir: Path) -> subprocess.Popen:
    """A process, in a session of its own (a terminal's SIGHUP does not reach it), that reads its
    stdin until the driver ends (the pipe's only writer), waits for the session's own shutdown and
    then ends whatever of it is left, logging to `<experiment>/ray_session.log`."""
    log = (experiment_dir / WATCHDOG_LOG).open("a")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tune.search.ray_session", "--watch", str(experiment_dir)],
        stdin=subprocess.PIPE,
        stdout=log,
        stderr=log,
        start_new_session=True,
        env=module_env(),
        close_fds=True,
    )
    log.close()
    # Keep the pipe's write end open for the driver's whole life; never written to.
    _watchdog_pipes.append(proc)
    return proc


_watchdog_pipes: list[subprocess.Popen] = []


# ------------------------------------------------------------------------- finding and ending


def end_leftovers(
    experiment_dir: Path, *, grace_s: float = 5.0, echo: Callable[[str], None] | None = print
) -> Cleanup | None:
    """End the processes left by the private Ray session recorded in `experiment_dir`, if its driver
    no longer runs; None if there is no record (no private Ray ran, or it was a cluster).

    SIGTERM first, SIGKILL after `grace_s` for any still there. Prints one line (through `echo`)
    when it ended something or left a live session alone. The record is removed once its session
    has no process left, so a later call does nothing.
    """
    record = experiment_dir / SESSION_FILE
    session = RaySession.read(record)
    if session is None or session.host != socket.gethostname():
        return None  # no private Ray here, or one on another machine sharing the storage
    cleanup = Cleanup(session.session_dir)
    if session.driver_alive():
        cleanup.driver_alive = True
        if echo:
            echo(cleanup.message())
        return cleanup
    if session.boot_id == _boot_id():
        cleanup.ended = end_processes(session_processes(session.session_dir), grace_s=grace_s)
    if not session_processes(session.session_dir):
        record.unlink(missing_ok=True)
    if echo and cleanup.ended:
        echo(cleanup.message())
    return cleanup


def end_leftovers_in(storage_path: Path, **kwargs: Any) -> list[Cleanup]:
    """`end_leftovers` for every experiment folder directly under `storage_path` that has a record:
    a new `tune.run` also ends what earlier crashed experiments beside it left."""
    cleanups = []
    for record in sorted(Path(storage_path).glob(f"*/{SESSION_FILE}")):
        cleanup = end_leftovers(record.parent, **kwargs)
        if cleanup is not None:
            cleanups.append(cleanup)
    return cleanups


SESSION_NAME = re.compile(r"session_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d+_\d+")
"""How Ray names a session's folder (`session_<date>_<time>_<microseconds>_<pid>`)."""


def is_session_folder(session_dir: str) -> bool:
    """Whether `session_dir` is a Ray session folder: an absolute path to a folder named as Ray
    names them, holding its `logs/`. A damaged or foreign record names none, and nothing is ended."""
    path = Path(session_dir or ".")
    return path.is_absolute() and SESSION_NAME.fullmatch(path.name) is not None and (path / "logs").is_dir()


def _is_ray(cmdline: bytes) -> bool:
    """Whether a command line is one of Ray's processes: a title Ray gave it (`ray::IDLE`,
    `ray::DashboardAgent`), or a program or script inside the installed ray package (raylet,
    gcs_server, its agents). A `tail -f` or an editor of a session's log is neither."""
    if cmdline.startswith(b"ray::"):
        return True
    return any(arg.startswith(_RAY_PACKAGE) for arg in cmdline.split(b"\0"))


def _ray_package() -> bytes:
    spec = importlib.util.find_spec("ray")  # where it is, without importing it (the watchdog is small)
    origin = spec.origin if spec is not None and spec.origin else None
    return (str(Path(origin).parent) + "/").encode() if origin else b"\0"


_RAY_PACKAGE = _ray_package()


def session_processes(session_dir: str) -> list[SessionProcess]:
    """This user's processes, other than this one, that belong to the Ray session `session_dir`:
    Ray's own processes (see `_is_ray`) whose command line names the folder (as a whole path part:
    `.../session_x_12` is not `.../session_x_1`), and processes that write a file in it (its
    workers' and agents' logs). None when `session_dir` is not a Ray session folder."""
    session_dir = session_dir.rstrip("/")
    if not is_session_folder(session_dir):
        return []
    in_cmdline = re.compile(re.escape(session_dir.encode()) + rb"(?![\w.-])")
    found = []
    for pid in _pids():
        if pid == os.getpid():
            continue
        try:
            cmdline = (PROC / str(pid) / "cmdline").read_bytes()
        except OSError:
            continue
        if (in_cmdline.search(cmdline) and _is_ray(cmdline)) or _writes_into(pid, session_dir):
            start = _start_time(pid)
            if start is not None:  # else it ended meanwhile, or is a zombie
                name = cmdline.split(b"\0", 1)[0].decode(errors="replace").strip() or f"pid {pid}"
                found.append(SessionProcess(pid, name, start))
    return found


def end_processes(processes: Iterable[SessionProcess], *, grace_s: float = 5.0) -> list[SessionProcess]:
    """SIGTERM each, wait up to `grace_s` for them to end, SIGKILL the rest; return those signalled.
    A process whose start time changed is another one that got the pid: left alone."""
    signalled = []
    for p in processes:
        if _start_time(p.pid) == p.start and _signal(p.pid, signal.SIGTERM):
            signalled.append(p)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_start_time(p.pid) == p.start for p in signalled):
        time.sleep(0.1)
    for p in signalled:
        if _start_time(p.pid) == p.start:
            _signal(p.pid, signal.SIGKILL)
    deadline = time.monotonic() + 2.0  # a SIGKILL takes effect at once, but not synchronously
    while time.monotonic() < deadline and any(_start_time(p.pid) == p.start for p in signalled):
        time.sleep(0.05)
    return signalled


def _signal(pid: int, sig: signal.Signals) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _pids() -> list[int]:
    try:
        return [int(d) for d in os.listdir(PROC) if d.isdigit()]
    except OSError:
        return []


def _writes_into(pid: int, session_dir: str) -> bool:
    """Whether the process holds a file under `session_dir` open for writing (its logs): a reader
    such as a `tail -f` on a log of the session is not part of it."""
    fd_dir = PROC / str(pid) / "fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:  # another user's process, or gone
        return False
    prefix = session_dir + "/"
    for fd in fds:
        try:
            target = os.readlink(fd_dir / fd)
            if not target.startswith(prefix):
                continue
            flags = next(
                line.split()[1]
                for line in (PROC / str(pid) / "fdinfo" / fd).read_text().splitlines()
                if line.startswith("flags:")
            )
        except (OSError, StopIteration, IndexError):
            continue
        if int(flags, 8) & os.O_ACCMODE != os.O_RDONLY:
            return True
    return False


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks after boot; None if it does not exist or is a zombie."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)", which may hold spaces
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _boot_id() -> str:
    try:
        return (PROC / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


# ------------------------------------------------------------------------- the watchdog


def _watch(experiment_dir: Path, *, settle_s: float = 5.0) -> int:
    """Run by `start_watchdog`: wait for the driver to end, then for its Ray session to shut down on
    its own (`settle_s`), then end what is left."""
    sys.stdin.buffer.read()  # returns when the driver's end of the pipe closes: it exited or died
    session = RaySession.read(experiment_dir / SESSION_FILE)
    if session is None:
        return 0
    while session.driver_alive():  # the pipe may close a moment before the process is gone
        time.sleep(0.1)
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline and session_processes(session.session_dir):
        time.sleep(0.2)
    cleanup = end_leftovers(experiment_dir, echo=None)
    if cleanup is not None and cleanup.ended:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} watchdog: {cleanup.message()}", flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--watch":
        sys.exit(_watch(Path(sys.argv[2])))
    sys.exit(f"usage: {sys.executable} -m tune.search.ray_session --watch EXPERIMENT_DIR")
