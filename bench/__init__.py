"""Benchmarks, run by hand on a quiet machine; bench/README.md shows today's tables and commands."""

from __future__ import annotations

from pathlib import Path

from mf.data import fetch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = "ml-latest-small"
"""Every benchmark's default data: the copy of ml-latest-small that ships with the package, so that
each one runs on a fresh clone, without a network."""


def data_folder(value: str) -> Path:
    """A `--data` value as a folder on disk: the path itself, or a data set's name fetched (the
    bundled ml-latest-small is unpacked into the cache, no network needed).

    Raises:
        DataError: a name that is no known data set, or a download that fails.
    """
    path = Path(value)
    return path.resolve() if path.exists() else fetch(value)
