"""Small helpers the tests share: files and a tiny dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mf.data import Dataset, Interactions, fetch

REPO = Path(__file__).resolve().parents[1]
DATA_CACHE = REPO / ".pytest_cache" / "mf-tune-data"


def ml_latest_small() -> Path:
    """The real ml-latest-small, from the copy that ships with the package (checksum verified and
    unpacked into a cache of the tests' own the first time): no network and no ../shared needed."""
    return fetch("ml-latest-small", cache_dir=DATA_CACHE)


def write_file(path: Path, text: str | bytes) -> Path:
    """Write text or bytes to `path`, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


N_USERS, N_ITEMS = 20, 15


def tiny_dataset(*, test: bool = False, first_user_id: int = 100, source: str = "tiny") -> Dataset:
    """Every user rates every item; ratings come from two hidden factors, in half stars."""
    rng = np.random.default_rng(0)
    p, q = rng.normal(size=(N_USERS, 2)), rng.normal(size=(N_ITEMS, 2))
    users, items = (a.ravel() for a in np.meshgrid(np.arange(N_USERS), np.arange(N_ITEMS), indexing="ij"))
    ratings = np.clip(np.round((3 + (p[users] * q[items]).sum(1)) * 2) / 2, 0.5, 5.0).astype(np.float32)
    rows = rng.permutation(len(ratings))
    val, rest = rows[:40], rows[40:]
    test_rows, train = (rest[:40], rest[40:]) if test else (None, rest)

    def part(r: np.ndarray) -> Interactions:
        return Interactions(users=users[r], items=items[r], ratings=ratings[r])

    return Dataset(
        train=part(train),
        val=part(val),
        test=part(test_rows) if test_rows is not None else None,
        user_ids=np.arange(N_USERS, dtype=np.int64) + first_user_id,
        item_ids=np.arange(N_ITEMS, dtype=np.int64) + 1000,
        titles=None,
        rating_scale=(0.5, 5.0),
        source=source,
    )
