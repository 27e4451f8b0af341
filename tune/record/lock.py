"""One writer per experiment folder: the lock every driver (`tune.run`, `--resume`) and `tune.export`
hold while they write there.

Two drivers on one folder would append to one study, resume the same trials into the same folders
and race on the export: the second is refused instead, with a line naming the first (host, pid, Ray
job, what it runs) and what to do. Readers (`tune.report`, the dashboard, `mf.recommend`) take no
lock.

The lock is `flock` on `<folder>/writer.lock`, whose text names the holder. The kernel releases
it when the holder's process ends, however it ends, so a lock left by a killed driver is simply
taken by the next one. Across hosts on a shared file system this holds where the file system
carries `flock` (Linux NFS v4 maps it to a byte-range lock the server keeps; CephFS and Lustre
with `flock` mounts too); on one that does not, the second writer is not refused, as before.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from mf.errors import MFError

LOCK_FILE = "writer.lock"
IN_RAY_JOB = "RAY_JOB_CONFIG_JSON_ENV_VAR"
"""Set by Ray's job supervisor for a job's driver: its JSON names the job (`metadata.job_submission_id`)."""


class ExperimentBusy(MFError):
    """Another process holds the experiment folder's writer lock."""


def holder(role: str) -> dict[str, object]:
    """Who this process is, as the lock's text says it: host, pid, Ray job id (if a job), role."""
    job = None
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        job = json.loads(os.environ.get(IN_RAY_JOB, "")).get("metadata", {}).get("job_submission_id")
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "ray_job": job,
        "role": role,
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def describe(text: str) -> str:
    """The holder a lock file's text names, in words (or what the text is, if it names none)."""
    try:
        h = json.loads(text)
        who = f"{h['role']} (pid {h['pid']} on {h['host']}" + (
            f", Ray job {h['ray_job']}" if h.get("ray_job") else ""
        )
        return f"{who}, since {h['since']})"
    except (ValueError, TypeError, KeyError):
        return "another process (its lock file names none)"


@contextlib.contextmanager
def writer_lock(folder: Path, role: str) -> Iterator[None]:
    """Hold `folder`'s writer lock while inside (the folder is created if need be).

    Raises ExperimentBusy, naming the holder and what to do, when another process holds it. A
    folder this call created and nothing else wrote to (a run refused before it began) is removed."""
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 4096, 0).decode(errors="replace")
            raise ExperimentBusy(
                f"{folder} is being written by {describe(text)}; wait for it to end, or stop it (Ctrl-C, "
                "`ray job stop`) and then `--resume` it; reports and the dashboard can read it meanwhile"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder(role)).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays, naming the last holder
        if made and [p.name for p in folder.iterdir()] == [LOCK_FILE]:
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                folder.rmdir()
