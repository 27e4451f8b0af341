"""Parse ratings and titles files fast, and explain bad ones precisely.

Why three paths: pyarrow's CSV reader parses typed columns on every core (a 25M-rating ml-25m
`ratings.csv` in seconds) but is strict (an id written `3.0` is an error to it); pandas' C parser
accepts what MovieLens files have always been read with, but takes several times longer; neither
says well what broke, while a line-by-line scan names the exact line but is slow. So we parse with
pyarrow, then pandas if pyarrow refused the file, validate vectorised, and only when that fails
scan the file once to find the first offending line.

Memory: pyarrow's blocks are copied into arrays sized by a line count as they are parsed, so the
peak is the parsed columns (32 bytes a rating: the rating as float64 for the validation) plus the
frame's float32 rating and a few blocks, not a table and then its copy.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from pyarrow import csv as pa_csv

from mf.data.layouts import FileRef, Layout, Scale
from mf.errors import DataError

_PARSE_ERRORS = (ValueError, OverflowError, pd.errors.ParserError, UnicodeDecodeError)


def read_ratings(ref: FileRef, layout: Layout, scale: Scale) -> pd.DataFrame:
    """Read a ratings file into columns user, item (int64 raw ids), rating (float32), timestamp
    (int64), in file order.

    Args:
        ref: the ratings file.
        layout: how its lines are laid out (separator, header).
        scale: the ratings it may hold; any other rating is an error.

    Raises:
        DataError: naming the file (and, where it can, the line and column) where the file is
            empty, its header lacks a column, a line does not parse, or a rating is off the scale.
    """
    fields = _check_header(ref, layout) if layout.header else []
    columns = _parse_arrow(ref, layout)
    if columns is None:  # pyarrow refused it: pandas accepts more, else the scan says what is wrong
        columns = _parse_pandas(ref, layout, scale, fields)
    user, item, rating, timestamp = columns
    if len(rating) == 0:
        raise DataError(f"{ref.label}: no ratings in the file; expected {layout.expected()}")
    if not _on_scale(rating, scale):
        raise DataError(_locate(ref, layout, scale, fields) or _fallback(ref, layout, None))
    # copy=False: one block per column, no consolidated copy of the three int64 columns.
    return pd.DataFrame(
        {"user": user, "item": item, "rating": rating.astype(np.float32), "timestamp": timestamp}, copy=False
    )


def _on_scale(rating: np.ndarray, scale: Scale, chunk: int = 1 << 20) -> bool:
    """Every rating finite, within the scale and on its steps (checked in chunks: bounded temporaries)."""
    for s in range(0, len(rating), chunk):
        r = rating[s : s + chunk]
        steps = r / scale.step
        if not (np.isfinite(r).all() and r.min() >= scale.low and r.max() <= scale.high):
            return False
        if not np.array_equal(steps, np.round(steps)):
            return False
    return True


Columns = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
"""user, item, timestamp (int64) and rating (float64), in file order."""


def _parse_arrow(ref: FileRef, layout: Layout) -> Columns | None:
    """The four columns by pyarrow's CSV reader; None where it cannot read the file.

    Streamed a block at a time into arrays sized by a count of the file's lines, so the peak is
    the result (32 bytes a rating: three int64 columns and the float64 rating) plus a few blocks.
    """
    names = list(layout.columns) if layout.header else ["user", "item", "rating", "timestamp"]
    types = dict(zip(names, (pa.int64(), pa.int64(), pa.float64(), pa.int64()), strict=True))
    read = pa_csv.ReadOptions(block_size=1 << 22, column_names=None if layout.header else names)
    parse = pa_csv.ParseOptions(delimiter="," if layout.header else "\t", quote_char=False)
    # No null spellings: an empty or "NA" field is an error here, not a missing value.
    convert = pa_csv.ConvertOptions(column_types=types, include_columns=names, null_values=[])
    try:
        # pyarrow reads a plain file itself; anything else (a zip member, '::'-separated fields) is
        # read into memory first: pyarrow reading from a Python file object with big blocks was seen
        # to abort the interpreter at exit. '::' is two characters, which no CSV reader takes, and a
        # tab never occurs in ratings.dat.
        if ref.path is not None and layout.sep != "::":
            src: str | pa.BufferReader = str(ref.path)
            lines = _count_lines(ref.path)
        else:
            with ref.open() as f:
                data = f.read()
            if layout.sep == "::":
                data = data.replace(b"::", b"\t")
            lines = data.count(b"\n") + 1
            src = pa.BufferReader(data)
        # Freed blocks go straight back to the OS (system allocator), not to a pool that keeps them.
        reader = pa_csv.open_csv(
            src,
            read_options=read,
            parse_options=parse,
            convert_options=convert,
            memory_pool=pa.system_memory_pool(),
        )
        columns = tuple(np.empty(lines, dtype=np.float64 if k == 2 else np.int64) for k in range(4))
        n = 0
        with reader:
            for batch in reader:
                rows = batch.num_rows
                if n + rows > lines:  # cannot happen (every row ends a line); stay safe
                    return None
                for k, out in enumerate(columns):
                    out[n : n + rows] = batch.column(k).to_numpy()
                n += rows
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, UnicodeDecodeError):
        return None
    user, item, rating, timestamp = (c[:n] for c in columns)
    return user, item, rating, timestamp


def _count_lines(path: Path) -> int:
    """Newlines in the file, plus one for a last line without one: at least its number of rows."""
    count, last = 0, b"\n"
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


def _parse_pandas(ref: FileRef, layout: Layout, scale: Scale, fields: list[str]) -> Columns:
    """pandas' C parser, which accepts what pyarrow does not (ids such as `3.0`); DataError if it fails."""
    if layout.header:
        dtype: dict = dict(zip(layout.columns, ("int64", "int64", "float64", "int64"), strict=True))
    else:
        dtype = {0: "int64", 1: "int64", 2: "float64", 3: "int64"}
    try:
        with ref.open() as f:
            src = io.BytesIO(f.read().replace(b"::", b"\t")) if layout.sep == "::" else f
            frame = pd.read_csv(
                src,
                sep="," if layout.header else "\t",
                header=0 if layout.header else None,
                dtype=dtype,
                engine="c",
                encoding="utf-8",
                encoding_errors="replace",
                quoting=csv.QUOTE_NONE,
            )
    except pd.errors.EmptyDataError:
        raise DataError(f"{ref.label}: the file is empty; expected {layout.expected()}") from None
    except _PARSE_ERRORS as e:
        raise DataError(_locate(ref, layout, scale, fields) or _fallback(ref, layout, e)) from e
    if not layout.header and frame.shape[1] != 4:
        raise DataError(_locate(ref, layout, scale, fields) or _fallback(ref, layout, None))
    cols = list(layout.columns) if layout.header else [0, 1, 2, 3]
    return (
        frame[cols[0]].to_numpy(np.int64),
        frame[cols[1]].to_numpy(np.int64),
        frame[cols[2]].to_numpy(np.float64),
        frame[cols[3]].to_numpy(np.int64),
    )


def _check_header(ref: FileRef, layout: Layout) -> list[str]:
    """Read line 1 alone so a wrong header gets its own message instead of a parse error later."""
    with ref.open() as f:
        first = f.readline()
    if not first.strip():
        raise DataError(f"{ref.label}: the file is empty; expected {layout.expected()}")
    text = first.decode("utf-8", errors="replace").lstrip("\ufeff").rstrip("\r\n")
    fields = [name.strip() for name in text.split(",")]
    missing = [name for name in layout.columns if name not in fields]
    if missing:
        raise DataError(
            f"{ref.label}, line 1: header {_show(text)} lacks column {missing[0]!r}; "
            f"expected a header {','.join(layout.columns)}"
        )
    return fields


def _locate(ref: FileRef, layout: Layout, scale: Scale, header: list[str]) -> str | None:
    """Scan the file once and describe its first bad line (1-based, header counted); None if all fine."""
    names = layout.columns
    n_fields = len(header) if layout.header else 4
    index = [header.index(name) for name in names] if layout.header else [0, 1, 2, 3]
    with ref.open() as f:
        for lineno, raw in enumerate(f, start=1):
            if layout.header and lineno == 1:
                continue
            text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if not text.strip():
                continue  # pandas skips blank lines too
            where = f"{ref.label}, line {lineno}"
            fields = text.split(layout.sep)
            if len(fields) != n_fields:
                expected = f"{n_fields} fields as in the header" if layout.header else layout.expected()
                return f"{where}: found {len(fields)} fields in {_show(text)}; expected {expected}"
            for col, (name, i) in enumerate(zip(names, index, strict=True)):
                value = fields[i].strip()
                if col == 2:
                    problem = _rating_problem(value, scale)
                    expected = scale.describe()
                else:
                    problem = None if _is_integer(value) else "not an integer"
                    expected = "an integer"
                if problem:
                    found = "an empty value" if not value else _show(value)
                    return f"{where}, column {name!r}: found {found} ({problem}); expected {expected}"
    return None


def _fallback(ref: FileRef, layout: Layout, error: Exception | None) -> str:
    detail = str(error).splitlines()[0] if error and str(error) else "unreadable content"
    return f"{ref.label}: could not be read as {layout.name} ratings ({detail}); expected {layout.expected()}"


def _is_integer(value: str) -> bool:
    # pandas accepts integral floats such as "3.0" for an int64 column, so we do too.
    if "_" in value:
        return False  # Python's int() takes "1_000"; pandas does not
    try:
        int(value)
        return True
    except ValueError:
        try:
            x = float(value)
        except ValueError:
            return False
        return math.isfinite(x) and x.is_integer()


def _rating_problem(value: str, scale: Scale) -> str | None:
    if not value:
        return "missing rating"
    try:
        x = float(value)
    except ValueError:
        return "not a number"
    if "_" in value:
        return "not a number"
    if not math.isfinite(x):
        return "not a number"
    if not scale.low <= x <= scale.high or x / scale.step != round(x / scale.step):
        return "outside the rating scale"
    return None


def _show(text: str, limit: int = 60) -> str:
    """Quote a value for a one-line message: repr escapes newlines, long values are cut."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def read_titles(ref: FileRef, layout: Layout) -> dict[int, str]:
    """Raw item id -> title from movies.csv (utf-8), u.item ('|', latin-1) or movies.dat ('::').

    Args:
        ref: the titles file.
        layout: the ratings layout, whose `titles_file` says which of the three it is.

    Raises:
        DataError: where the file cannot be parsed as that titles file.
    """
    try:
        with ref.open() as f:
            data = f.read()
        if layout.titles_file == "movies.csv":
            frame = pd.read_csv(io.BytesIO(data), usecols=["movieId", "title"], dtype={"movieId": "int64"})
            ids, titles = frame["movieId"].to_numpy(), frame["title"].astype(str).to_numpy()
        elif layout.titles_file == "u.item":
            frame = pd.read_csv(
                io.BytesIO(data),
                sep="|",
                header=None,
                usecols=[0, 1],
                dtype={0: "int64", 1: str},
                encoding="latin-1",
                quoting=csv.QUOTE_NONE,
                keep_default_na=False,
            )
            ids, titles = frame[0].to_numpy(), frame[1].to_numpy()
        else:
            return _read_movies_dat(ref, data)
    except _PARSE_ERRORS as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(
            f"{ref.label}: could not read titles ({detail}); expected {layout.titles_file} layout"
        ) from e
    return dict(zip(ids.tolist(), titles.tolist(), strict=True))


def _read_movies_dat(ref: FileRef, data: bytes) -> dict[int, str]:
    # ml-1m ships movies.dat in latin-1, ml-10m in utf-8: try the strict one first.
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    titles: dict[int, str] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("::")
        if len(fields) < 2 or not _is_integer(fields[0].strip()):
            raise DataError(
                f"{ref.label}, line {lineno}: found {_show(line)}; expected MovieID::Title::Genres"
            )
        titles[int(float(fields[0]))] = fields[1]
    return titles
