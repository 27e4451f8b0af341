"""Named MovieLens sets: fetch once into a cache, verify, unpack, and never leave half a file behind.

Why so careful: a cache that can hold a truncated zip or a half-unpacked folder fails later, far
from the cause. So every step writes to a temporary name in the cache folder and is published with
an atomic rename only after it succeeded; a failure removes its temporary and raises `DataError`.

ml-latest-small comes with the package (`mf/data/bundled/`, GroupLens' zip unchanged, under
GroupLens' terms: see NOTICE.txt there), so the default data set needs no network: its zip is
checked against the same registered checksum as a download and unpacked into the cache the same way.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.resources
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from mf.errors import DataError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

DEFAULT_BASE_URL = "https://files.grouplens.org/datasets/movielens"
BASE_URL_ENV = "MF_TUNE_DATA_URL"  # base such that url = base + "/" + name + ".zip"; tests use loopback
CACHE_ENV = "MF_TUNE_DATA"  # cache folder; default $XDG_CACHE_HOME/mf-tune or ~/.cache/mf-tune


class RemoteDataset(NamedTuple):
    """Where a named set is published, the checksum of its zip, and the folder the zip unpacks to."""

    url: str
    checksum: str  # "<algorithm>:<hex digest>", algorithm one of hashlib's names (sha256, md5)
    folder: str


def _grouplens(name: str, checksum: str, folder: str | None = None) -> RemoteDataset:
    return RemoteDataset(f"{DEFAULT_BASE_URL}/{name}.zip", checksum, folder or name)


# Checksums as published by others who downloaded the GroupLens zips; none computed here.
# - sha256 of ml-latest-small, ml-100k, ml-1m, ml-20m, ml-25m: tensorflow/datasets,
#   tensorflow_datasets/url_checksums/movielens.txt (ml-latest-small also in shared/README.md;
#   ml-1m also tensorflow/models' movielens.py MOVIELENS_ZIP_HASH).
# - md5 of ml-10m: GroupLens' own ml-10m.zip.md5, as copied into eli-osherovich/papers_with_code
#   datasets/movielens/dl_config.py and several other loaders.
# ml-latest is left out: GroupLens republishes it under the same name, so no checksum is stable.
DATASETS: dict[str, RemoteDataset] = {
    "ml-latest-small": _grouplens(
        "ml-latest-small", "sha256:696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436"
    ),
    "ml-100k": _grouplens(
        "ml-100k", "sha256:50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229"
    ),
    "ml-1m": _grouplens("ml-1m", "sha256:a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20"),
    "ml-10m": _grouplens("ml-10m", "md5:ce571fd55effeba0271552578f2648bd", folder="ml-10M100K"),
    "ml-20m": _grouplens("ml-20m", "sha256:96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3"),
    "ml-25m": _grouplens("ml-25m", "sha256:8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa"),
}

# Sets whose GroupLens zip ships inside the package (package data of mf.data, see pyproject.toml),
# verified against DATASETS' checksum before use. A value is any path-like resource; from the source
# tree and from an installed wheel alike `importlib.resources` finds it beside this module.
BUNDLED: dict[str, Traversable | Path] = {
    "ml-latest-small": importlib.resources.files("mf.data") / "bundled" / "ml-latest-small.zip",
}

_CHUNK = 1 << 20


def data_home(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder: the argument, else $MF_TUNE_DATA, else $XDG_CACHE_HOME/mf-tune or ~/.cache/mf-tune."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "mf-tune"


def fetch(name: str, *, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return `<cache>/<name>/`, verifying and unpacking the zip the first time.

    The zip is the package's own copy for a set in `BUNDLED` (no network), else downloaded from
    `$MF_TUNE_DATA_URL` or GroupLens. Either must match the set's registered checksum: a damaged
    bundled copy raises `DataError` rather than falling back to a download, since it means a
    broken install that a reinstall mends. A bundled file that is absent (an install made without
    the package data) is downloaded instead.

    Args:
        name: a key of DATASETS.
        cache_dir: the cache folder (None: `data_home()`'s default).

    Returns:
        The folder the set was unpacked to.

    Raises:
        DataError: for a name not in DATASETS, a cache folder that cannot be created, a bundled
            zip with the wrong checksum, a download that fails, is truncated or has the wrong
            checksum, or a zip that cannot be unpacked.
    """
    if name not in DATASETS:
        raise DataError(f"{name!r}: not a known data set; expected one of {', '.join(DATASETS)}")
    info = DATASETS[name]
    root = data_home(cache_dir)
    target = root / name
    if target.is_dir():
        return target
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"{root}: cannot create the data cache ({e}); set {CACHE_ENV} to a writable folder"
        ) from e
    bundled = BUNDLED.get(name)
    if bundled is not None and bundled.is_file():
        with importlib.resources.as_file(bundled) as archive:
            got = _digest(archive, info.checksum)
            if got != info.checksum:
                raise DataError(
                    f"{archive}: the bundled copy of {name} has checksum {got}; expected "
                    f"{info.checksum} (the package is damaged: reinstall mf-tune)"
                )
            _unpack(archive, target, info.folder)
        return target
    archive = root / f"{name}.zip"
    if not (archive.is_file() and _digest(archive, info.checksum) == info.checksum):
        archive.unlink(missing_ok=True)
        base = os.environ.get(BASE_URL_ENV, DEFAULT_BASE_URL).rstrip("/")
        _download(f"{base}/{name}.zip", archive, info.checksum)
    _unpack(archive, target, info.folder)
    return target


def _digest(path: Path, checksum: str) -> str:
    algorithm = checksum.split(":", 1)[0]
    h = hashlib.new(algorithm)
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return f"{algorithm}:{h.hexdigest()}"


def _download(url: str, archive: Path, checksum: str) -> None:
    """Stream `url` into a temp file beside `archive`, check length and checksum, then rename."""
    print(f"mf-tune: downloading {url} to {archive}", file=sys.stderr, flush=True)
    algorithm = checksum.split(":", 1)[0]
    fd, tmp_name = tempfile.mkstemp(dir=archive.parent, prefix=f".{archive.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        h, size = hashlib.new(algorithm), 0
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            announced = response.headers.get("Content-Length")
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                h.update(chunk)
                size += len(chunk)
        # http.client returns b"" rather than raising when the server closes early, so count bytes.
        if announced is not None and size != int(announced):
            raise DataError(
                f"{url}: download truncated at {size:,} of {int(announced):,} bytes; "
                "expected the whole file (try again)"
            )
        got = f"{algorithm}:{h.hexdigest()}"
        if got != checksum:
            raise DataError(f"{url}: checksum {got} does not match; expected {checksum} (download removed)")
        os.replace(tmp, archive)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        raise DataError(f"{url}: download failed ({e}); expected a MovieLens zip") from e
    finally:
        tmp.unlink(missing_ok=True)


def _unpack(archive: Path, target: Path, folder: str) -> None:
    """Extract into a temp folder beside `target`, then rename its data folder into place."""
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".unpack"))
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
        inner = tmp / folder
        try:
            os.replace(inner if inner.is_dir() else tmp, target)
        except OSError:
            if not target.is_dir():  # else another process unpacked it first, which is as good
                raise
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{archive}: cannot unpack ({e}); expected a MovieLens zip") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
