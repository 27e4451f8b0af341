"""A synthetic MovieLens-shaped data set for the scale benchmark, generated with vectorised numpy.

Why synthetic: ml-25m is a download and a minute of parsing; a generated set of any size, with the
same skew and a learnable signal, measures the trainer alone and runs anywhere.
"""

from __future__ import annotations

import numpy as np

from mf.data import Dataset, Interactions


def _power_law_ids(rng: np.random.Generator, n_ids: int, n_draws: int, exponent: float) -> np.ndarray:
    """Draws with P(rank r) ~ r^-exponent; ranks are shuffled onto ids, as popularity is in a real encoding."""
    cdf = np.cumsum(np.arange(1, n_ids + 1, dtype=np.float64) ** -exponent)
    ranks = np.searchsorted(cdf, rng.random(n_draws) * cdf[-1])
    return rng.permutation(n_ids)[np.minimum(ranks, n_ids - 1)]


def synthetic_movielens(n_ratings: int, *, seed: int = 0, rank: int = 8, chunk: int = 1 << 20) -> Dataset:
    """About 160k users and 60k items per 10M ratings (ml-25m's counts), half stars from a rank-8 model.

    Why this shape: a trainer's cost depends on the row count and on how many distinct table rows a
    batch touches, which skewed activity and popularity set; a low-rank truth + noise (std 0.5) makes
    the val MSE move, down towards ~0.3, so a broken trainer shows. Duplicate (user, item) pairs are kept.
    """
    rng = np.random.default_rng(seed)
    n_users = max(100, round(160_000 * n_ratings / 10_000_000))
    n_items = max(50, round(60_000 * n_ratings / 10_000_000))
    users = _power_law_ids(rng, n_users, n_ratings, exponent=0.6)  # most active ~0.3%, least ~25 per 10M
    items = _power_law_ids(rng, n_items, n_ratings, exponent=0.8)  # a long-tailed catalogue
    p = rng.normal(0.0, 0.5, (n_users, rank)).astype(np.float32)
    q = rng.normal(0.0, 0.5, (n_items, rank)).astype(np.float32)
    b_u = rng.normal(0.0, 0.4, n_users).astype(np.float32)
    b_i = rng.normal(0.0, 0.5, n_items).astype(np.float32)
    ratings = np.empty(n_ratings, dtype=np.float32)
    for s in range(0, n_ratings, chunk):  # chunks keep the (chunk, rank) gathers small
        u, i = users[s : s + chunk], items[s : s + chunk]
        ratings[s : s + chunk] = 3.5 + b_u[u] + b_i[i] + np.einsum("ij,ij->i", p[u], q[i])
    ratings += rng.normal(0.0, 0.5, n_ratings).astype(np.float32)
    ratings = np.clip(np.round(ratings * 2) / 2, 0.5, 5.0).astype(np.float32)
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
