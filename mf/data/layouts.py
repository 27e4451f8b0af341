"""The three ways GroupLens lays out ratings, described as data so readers and detection share one truth."""

from __future__ import annotations

import contextlib
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO


@dataclass(frozen=True)
class Scale:
    """The ratings a set allows: `low`..`high` in steps of `step` (half stars or whole stars)."""

    low: float
    high: float
    step: float

    def describe(self) -> str:
        """The scale in words, for messages that say what rating was expected."""
        if self.step == 1.0:
            return f"an integer rating from {self.low:g} to {self.high:g}"
        return f"a rating from {self.low:g} to {self.high:g} in steps of {self.step:g}"


HALF_STARS = Scale(0.5, 5.0, 0.5)  # ml-latest*, ml-20m, ml-25m, ml-10m
WHOLE_STARS = Scale(1.0, 5.0, 1.0)  # ml-100k, ml-1m


@dataclass(frozen=True)
class Layout:
    """One file layout: the ratings file's canonical name, its separator, and where titles live."""

    name: str
    ratings_file: str
    titles_file: str
    sep: str
    header: bool
    columns: tuple[str, str, str, str]  # how messages name user, item, rating, timestamp

    def expected(self) -> str:
        """The layout in words, for messages that say what was expected."""
        if self.header:
            return f"a header line {','.join(self.columns)} followed by comma-separated ratings"
        return f"4 fields separated by {self.sep!r} (user{self.sep}item{self.sep}rating{self.sep}timestamp)"


CSV = Layout("csv", "ratings.csv", "movies.csv", ",", True, ("userId", "movieId", "rating", "timestamp"))
UDATA = Layout("u.data", "u.data", "u.item", "\t", False, ("user id", "item id", "rating", "timestamp"))
DAT = Layout(
    "ratings.dat", "ratings.dat", "movies.dat", "::", False, ("UserID", "MovieID", "Rating", "Timestamp")
)

# Order matters when a folder holds several: the modern CSV wins.
LAYOUTS: tuple[Layout, ...] = (CSV, DAT, UDATA)


@dataclass(frozen=True)
class FileRef:
    """A file inside a folder or a zip, opened the same way either way, with a label for messages."""

    label: str
    open: Callable[[], contextlib.AbstractContextManager[IO[bytes]]]
    path: Path | None = None  # a plain file on disk, which a reader may open itself (pyarrow does)


def folder_file(path: Path) -> FileRef:
    """A FileRef to the plain file `path` (opened in binary; `path` kept for readers that open it
    themselves). Nothing is opened here: a missing file raises OSError when it is opened."""
    return FileRef(str(path), lambda: path.open("rb"), path)


def zip_member(archive: Path, member: str) -> FileRef:
    """A FileRef to `member` of the zip `archive`, labelled `<archive>/<member>`; each open opens the
    archive again. Nothing is opened here: a missing member raises KeyError, a bad archive
    zipfile.BadZipFile, when it is opened."""

    @contextlib.contextmanager
    def _open() -> Iterator[IO[bytes]]:
        with zipfile.ZipFile(archive) as zf, zf.open(member) as f:
            yield f

    return FileRef(f"{archive}/{member}", _open)
