"""One public entry, `load_movielens`, that detects which MovieLens release it was given.

Why detect instead of configure: the release is evident from the files (ratings.csv, ratings.dat,
u.data), and a config key that can disagree with the files is one more way to be wrong.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mf.data.download import DATASETS, fetch
from mf.data.layouts import (
    CSV,
    DAT,
    HALF_STARS,
    LAYOUTS,
    UDATA,
    WHOLE_STARS,
    FileRef,
    Layout,
    Scale,
    folder_file,
    zip_member,
)
from mf.data.readers import read_ratings, read_titles
from mf.errors import DataError


@dataclass(frozen=True, eq=False)  # a DataFrame: compare by identity, not element-wise
class Ratings:
    """Raw ratings as read from disk, before any encoding or splitting.

    `frame` has columns user, item (int64 raw ids), rating (float32), timestamp (int64), in file
    order; `titles` maps raw item id to title where the set ships them; `source` is for messages.
    """

    frame: pd.DataFrame
    titles: dict[int, str] | None
    source: str


@dataclass(frozen=True)
class _Found:
    """What detection settled on: the ratings file, how to read it, and where its titles are."""

    ratings: FileRef
    layout: Layout
    scale: Scale
    titles: FileRef | None


def load_movielens(
    source: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str] | None = None
) -> Ratings:
    """Read MovieLens ratings from a folder, a zip, a single ratings file, or a data set name.

    A path that exists is read as a path; otherwise a name from `DATASETS` is fetched into the
    cache (see `mf.data.download`). Bad input raises `DataError` naming file, line and value.

    Args:
        source: a path (`~` expanded) or a data set name.
        cache_dir: where named data sets are cached (None: `data_home()`'s default).

    Returns:
        The ratings in file order, the titles where the set has them, and `source` as its label.

    Raises:
        DataError: where `source` is neither an existing path nor a data set name, the set cannot
            be fetched, no MovieLens ratings file is found, or a ratings or titles file is
            malformed.
    """
    path = Path(source).expanduser()
    if not path.exists():
        name = os.fspath(source)
        if name not in DATASETS:
            raise DataError(
                f"{name}: no such file or directory, and not a data set name; "
                f"expected a path or one of {', '.join(DATASETS)}"
            )
        path = fetch(name, cache_dir=cache_dir)
    found = _detect(path)
    frame = read_ratings(found.ratings, found.layout, found.scale)
    titles = read_titles(found.titles, found.layout) if found.titles else None
    return Ratings(frame=frame, titles=titles, source=os.fspath(source))


def _detect(path: Path) -> _Found:
    if path.is_dir():
        names = {
            str(p.relative_to(path).as_posix())
            for p in [*path.iterdir(), *(q for d in path.iterdir() if d.is_dir() for q in d.iterdir())]
            if p.is_file()
        }
        return _detect_in(names, lambda name: folder_file(path / name), str(path))
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                names = {n for n in zf.namelist() if not n.endswith("/") and n.count("/") <= 1}
        except (zipfile.BadZipFile, OSError) as e:
            raise DataError(f"{path}: cannot read the zip archive ({e}); expected a MovieLens zip") from e
        return _detect_in(names, lambda name: zip_member(path, name), str(path))
    if path.suffix.lower() == ".zip":
        raise DataError(
            f"{path}: not a valid zip archive; expected a MovieLens zip such as ml-latest-small.zip"
        )
    if path.is_file():
        return _detect_file(path)
    raise DataError(f"{path}: neither a file nor a folder; expected a MovieLens folder, zip or ratings file")


def _detect_in(names: set[str], ref: Callable[[str], FileRef], label: str) -> _Found:
    """Find the ratings file at the top of a folder or zip, or under exactly one top folder."""
    tops = sorted({n.split("/")[0] + "/" for n in names if "/" in n})
    for prefixes in ([""], tops):
        hits = [(p, lay) for p in prefixes for lay in LAYOUTS if p + lay.ratings_file in names]
        folders = sorted({p for p, _ in hits})
        if len(folders) > 1:
            raise DataError(
                f"{label}: several folders hold ratings ({', '.join(folders)}); expected one MovieLens set"
            )
        if hits:
            prefix = folders[0]
            layout = next(lay for p, lay in hits if p == prefix)  # LAYOUTS order: ratings.csv first
            titles = prefix + layout.titles_file
            return _Found(
                ratings=ref(prefix + layout.ratings_file),
                layout=layout,
                scale=_scale(layout, users_dat=prefix + "users.dat" in names),
                titles=ref(titles) if titles in names else None,
            )
    wanted = ", ".join(lay.ratings_file for lay in LAYOUTS)
    raise DataError(
        f"{label}: no MovieLens ratings file found; expected one of {wanted} at the top or in one top folder"
    )


def _detect_file(path: Path) -> _Found:
    """A single ratings file: known names decide the layout, anything else is sniffed from line 1."""
    layout = next((lay for lay in LAYOUTS if path.name == lay.ratings_file), None)
    if layout is None:
        with path.open("rb") as f:
            first = f.readline(65536).decode("latin-1").rstrip("\r\n")
        if not first.strip():
            raise DataError(f"{path}: the file is empty; expected MovieLens ratings")
        if "::" in first:
            layout = DAT
        elif "\t" in first:
            layout = UDATA
        elif "," in first:
            layout = CSV
        else:
            raise DataError(
                f"{path}, line 1: found {first[:60]!r}, which matches no MovieLens "
                "layout; expected a CSV header userId,movieId,rating,timestamp, tab-separated u.data "
                "fields or '::'-separated ratings.dat fields"
            )
    titles = path.parent / layout.titles_file
    return _Found(
        ratings=folder_file(path),
        layout=layout,
        scale=_scale(layout, users_dat=(path.parent / "users.dat").is_file()),
        titles=folder_file(titles) if titles.is_file() else None,
    )


def _scale(layout: Layout, *, users_dat: bool) -> Scale:
    # ratings.dat is ml-1m (whole stars, ships users.dat) or ml-10m (half stars, no users.dat).
    if layout is UDATA or (layout is DAT and users_dat):
        return WHOLE_STARS
    return HALF_STARS
