"""A synthetic MovieLens-shaped data set for the scale benchmark, generated with vectorised numpy.

Why synthetic: ml-25m is a download and a minute of parsing; a generated set of any size, with the
same skew and a learnable signal, measures the trainer alone and runs anywhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from mf.data import Dataset, Interactions

_SCHEMA = pa.schema(
    [
        ("userId", pa.int64()),
        ("movieId", pa.int64()),
        ("rating", pa.dictionary(pa.int8(), pa.string())),
        ("timestamp", pa.int64()),
    ]
)


def _power_law_ids(rng: np.random.Generator, n_ids: int, n_draws: int, exponent: float) -> np.ndarray:
    """Draws with P(rank r) ~ r^-exponent; ranks are shuffled onto ids, as popularity is in a real encoding."""
    cdf = np.cumsum(np.arange(1, n_ids + 1, dtype=np.float64) ** -exponent)
    ranks = np.searchsorted(cdf, rng.random(n_draws) * cdf[-1])
    return rng.permutation(n_ids)[np.minimum(ranks, n_ids - 1)]


def synthetic_ratings(
    n_ratings: int, *, seed: int = 0, rank: int = 8, chunk: int = 1 << 20
) -> tuple[np.random.Generator, int, int, np.ndarray, np.ndarray, np.ndarray]:
    """The generator (to draw on from), table sizes and the rows: user, item (int32 codes), rating."""
    rng = np.random.default_rng(seed)
    n_users = max(100, round(160_000 * n_ratings / 10_000_000))
    n_items = max(50, round(60_000 * n_ratings / 10_000_000))
    users = _power_law_ids(rng, n_users, n_ratings, exponent=0.6).astype(np.int32)  # most active ~0.3%
    items = _power_law_ids(rng, n_items, n_ratings, exponent=0.8).astype(np.int32)  # a long tail
    p = rng.normal(0.0, 0.5, (n_users, rank)).astype(np.float32)
    q = rng.normal(0.0, 0.5, (n_items, rank)).astype(np.float32)
    b_u = rng.normal(0.0, 0.4, n_users).astype(np.float32)
    b_i = rng.normal(0.0, 0.5, n_items).astype(np.float32)
    ratings = np.empty(n_ratings, dtype=np.float32)
    for s in range(0, n_ratings, chunk):  # chunks keep the (chunk, rank) gathers small
        u, i = users[s : s + chunk], items[s : s + chunk]
        ratings[s : s + chunk] = 3.5 + b_u[u] + b_i[i] + np.einsum("ij,ij->i", p[u], q[i])
    ratings += rng.normal(0.0, 0.5, n_ratings).astype(np.float32)
    np.clip(np.round(ratings * 2) / 2, 0.5, 5.0, out=ratings)
    return rng, n_users, n_items, users, items, ratings


def synthetic_movielens(n_ratings: int, *, seed: int = 0, rank: int = 8) -> Dataset:
    """About 160k users and 60k items per 10M ratings (ml-25m's counts), half stars from a rank-8 model.

    Why this shape: a trainer's cost depends on the row count and on how many distinct table rows a
    batch touches, which skewed activity and popularity set; a low-rank truth + noise (std 0.5) makes
    the val MSE move, down towards ~0.3, so a broken trainer shows. Duplicate (user, item) pairs are kept.
    The parts hold the Dataset's dtypes: int32 ids, float32 ratings.
    """
    rng, n_users, n_items, users, items, ratings = synthetic_ratings(n_ratings, seed=seed, rank=rank)
    is_val = rng.random(n_ratings) < 0.01

    def part(rows: np.ndarray) -> Interactions:
        return Interactions(users=users[rows], items=items[rows], ratings=ratings[rows])

    return Dataset(
        train=part(~is_val),
        val=part(is_val),
        test=None,
        user_ids=np.arange(n_users, dtype=np.int64),
        item_ids=np.arange(n_items, dtype=np.int64),
        titles=None,
        rating_scale=(0.5, 5.0),
        source=f"synthetic-{n_ratings}",
    )


def write_ratings_csv(path: str | os.PathLike[str], n_ratings: int, *, seed: int = 0) -> Path:
    """The same ratings as an ml-25m-layout `ratings.csv` (header `userId,movieId,rating,timestamp`).

    Raw ids are what MovieLens has: user ids 1..n, movie ids spread over about 3.5x the number of
    movies (ml-25m: 62,423 movies up to id 209,171), ratings written as ml-25m does ("4.0", "3.5"),
    timestamps over ml-25m's span. Written through pyarrow in slices of 4M rows, to a temporary name
    that is renamed when complete, so that a cache never holds half a file.
    """
    from pyarrow import csv

    rng, n_users, n_items, users, items, ratings = synthetic_ratings(n_ratings, seed=seed)
    movie_ids = np.sort(rng.choice(np.arange(1, round(3.5 * n_items) + 1), n_items, replace=False))
    timestamps = rng.integers(789_652_009, 1_574_327_703, n_ratings)
    stars = pa.array([f"{0.5 * k:.1f}" for k in range(11)])  # "0.0", "0.5", ... "5.0"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    slice_rows = 1 << 22
    try:
        options = csv.WriteOptions(include_header=False, quoting_style="none")
        with tmp.open("wb") as f, csv.CSVWriter(f, _SCHEMA, write_options=options) as writer:
            f.write(b"userId,movieId,rating,timestamp\n")  # pyarrow would quote the names
            for s in range(0, n_ratings, slice_rows):
                e = min(s + slice_rows, n_ratings)
                codes = pa.array(np.round(ratings[s:e] * 2).astype(np.int8))
                writer.write_table(
                    pa.table(
                        {
                            "userId": pa.array(users[s:e].astype(np.int64) + 1),
                            "movieId": pa.array(movie_ids[items[s:e]]),
                            "rating": pa.DictionaryArray.from_arrays(codes, stars),
                            "timestamp": pa.array(timestamps[s:e]),
                        },
                        schema=_SCHEMA,
                    )
                )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
