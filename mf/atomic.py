"""Atomic file and folder writes: a crash leaves the old file (folder) or the new one, never half of
either, and never neither."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
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

    Args:
        path: the file to write; its folder is created if missing.
        write: writes the content to the binary file object it is given.
        fsync: flush the file to the disk before the rename.

    Returns:
        `path`, as a Path.

    Raises:
        OSError: where the folder, the temp file or the rename fails. Whatever `write` raises
            passes through. Either way the temp file is removed and `path` is left as it was.
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


def atomic_write_text(path: str | os.PathLike, text: str, *, fsync: bool = True) -> Path:
    """Write `text`, UTF-8 encoded, to `path` atomically (see `atomic_write`).

    Args:
        path: the file to write.
        text: its new content.
        fsync: flush the file to the disk before the rename.

    Returns:
        `path`, as a Path.

    Raises:
        OSError: as `atomic_write`; `path` is then left as it was.
    """
    return atomic_write(path, lambda f: f.write(text.encode()), fsync=fsync)


def write_yaml(path: str | os.PathLike, values: Any) -> Path:
    """Write `values` as YAML (keys in their order) to `path` atomically, fsynced.

    Args:
        path: the file to write.
        values: plain data that `yaml.safe_dump` takes (dicts, lists, str, numbers, bools, None).

    Returns:
        `path`, as a Path.

    Raises:
        yaml.representer.RepresenterError: where `values` holds an object safe_dump cannot write
            (nothing is written then).
        OSError: as `atomic_write`.
    """
    return atomic_write_text(path, yaml.safe_dump(values, sort_keys=False))


def write_json(path: str | os.PathLike, values: Any) -> Path:
    """Write `values` as indented JSON (keys in their order, a final newline) to `path` atomically, fsynced.

    Args:
        path: the file to write.
        values: data that `json.dumps` takes.

    Returns:
        `path`, as a Path.

    Raises:
        TypeError: where `values` holds something JSON cannot represent (nothing is written then).
        OSError: as `atomic_write`.
    """
    return atomic_write_text(path, json.dumps(values, indent=2, sort_keys=False) + "\n")


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux's renameat2 with RENAME_EXCHANGE); False where the system
    or the file system cannot."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    rc = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def replace_folder(new: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put the folder `new` where `target` is (the two on one file system), removing the old one.

    Readers of `target` see the old folder or the new one whole, and never no folder: the two are
    exchanged in one step where the system can (Linux 3.15+ on local file systems and most network
    ones); elsewhere the old one is renamed aside (`.<name>-old`) just before the new one takes its
    place, and a folder left aside by a crash in between is removed the next time.

    Args:
        new: the folder to put in place; it is gone (moved) afterwards.
        target: where it goes; it need not exist.

    Raises:
        OSError: where a rename fails (e.g. `new` is missing or on another file system).
    """
    new, target = Path(new), Path(target)
    aside = target.with_name(f".{target.name}-old")
    shutil.rmtree(aside, ignore_errors=True)
    if target.exists() and _exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # what was the target
        return
    if target.exists():
        target.rename(aside)
    new.rename(target)
    shutil.rmtree(aside, ignore_errors=True)
