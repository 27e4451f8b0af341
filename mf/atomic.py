"""Atomic file writes: a crash leaves the old file or the new one, never half of either."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import yaml


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any], *, fsync: bool = True) -> Path:
    """Call `write(file)` on a temp file beside `path`, fsync it, then rename it over `path`.

    fsync=False still never shows a half-written file to a reader or after a killed process, but
    an OS crash may leave an empty one: for files that are cheap to lose and written often.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; a plain open() would honour the umask
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def write_yaml(path: str | os.PathLike, values: Any) -> Path:
    return atomic_write_text(path, yaml.safe_dump(values, sort_keys=False))


def write_json(path: str | os.PathLike, values: Any) -> Path:
    return atomic_write_text(path, json.dumps(values, indent=2, sort_keys=False) + "\n")
