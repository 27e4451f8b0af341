"""Ranking quality of a rating model: precision@k, recall@k and NDCG@k over held-out ratings.

A model tuned on rating MSE is often used to rank, and a low MSE does not promise a good top 10.
These metrics judge it as a recommender: for each user, every item not rated in train is a
candidate, the user's held-out ratings >= `threshold` are the relevant items, and users with no
relevant item are skipped. Pure numpy, scored a batch of users at a time with one matrix multiply,
so that it runs the same on ml-latest-small and on ml-25m.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from mf.data import Interactions
from mf.errors import ConfigError

Scores = Callable[[np.ndarray], np.ndarray]
"""users (B,) -> scores of every item (B, n_items); higher is better."""

BATCH_CELLS = 1 << 24  # scores per batch (B * n_items): 64 MB of float32


@dataclass(frozen=True, eq=False)
class FactorScorer:
    """MFAdvanced's prediction as numpy arrays: every item's predicted rating for a batch of users.

    Held as plain arrays so that ranking needs no torch and a batch of users is one matrix multiply.
    """

    user_factors: np.ndarray  # (U, D)
    item_factors: np.ndarray  # (I, D)
    user_bias: np.ndarray | None  # (U,)
    item_bias: np.ndarray | None  # (I,)
    offset: float
    sigmoid_high: float | None  # None: the raw dot product, no squashing

    @property
    def n_items(self) -> int:
        return int(self.item_factors.shape[0])

    def __call__(self, users: np.ndarray) -> np.ndarray:
        x = self.user_factors[users] @ self.item_factors.T  # (B, I)
        if self.user_bias is not None and self.item_bias is not None:
            x += self.user_bias[users][:, None] + self.item_bias[None, :] + self.offset
        if self.sigmoid_high is not None:
            # sigmoid via tanh: no overflow warning for large |x|
            x = self.sigmoid_high * 0.5 * (1.0 + np.tanh(0.5 * x))
        return x


@dataclass(frozen=True)
class RankingMetrics:
    """Mean precision@k, recall@k and NDCG@k over the users that had a relevant held-out item."""

    k: int
    precision: float
    recall: float
    ndcg: float
    users: int
    """Users evaluated (with at least one held-out rating >= threshold)."""
    skipped: int
    """Users of the data set without a relevant held-out rating."""
    threshold: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def top_k(scores: np.ndarray, exclude: np.ndarray, k: int) -> np.ndarray:
    """Indices (B, k') of the k highest scores per row, best first, never an excluded item.

    k' = min(k, n_items); a row with fewer than k' candidates is padded with -1.
    """
    scores = np.where(exclude, -np.inf, scores)
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # (B, k) unordered
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    top = np.take_along_axis(part, order, axis=1)
    return np.where(np.isneginf(np.take_along_axis(scores, top, axis=1)), -1, top)


def _rows_by_user(part: Interactions, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Items of `part` grouped by user: (items sorted by user, start offset of each user (U+1,))."""
    order = np.argsort(part.users, kind="stable")
    starts = np.searchsorted(part.users[order], np.arange(n_users + 1))
    return part.items[order], starts


def _mask(users: np.ndarray, items: np.ndarray, starts: np.ndarray, n_items: int) -> np.ndarray:
    """Boolean (B, n_items): True where the batch's user has the item in the grouped part."""
    begins = starts[users]
    lengths = starts[users + 1] - begins
    rows = np.repeat(np.arange(len(users)), lengths)
    # positions begins[b] .. begins[b] + lengths[b] - 1 of every user b, in one gather
    positions = np.arange(lengths.sum()) + np.repeat(begins - (np.cumsum(lengths) - lengths), lengths)
    mask = np.zeros((len(users), n_items), dtype=bool)
    mask[rows, items[positions]] = True
    return mask


def ranking_metrics(
    scores: Scores,
    *,
    train: Interactions,
    heldout: Interactions,
    n_users: int,
    n_items: int,
    k: int = 10,
    threshold: float = 4.0,
) -> RankingMetrics:
    """precision@k, recall@k, NDCG@k (binary gains) of `scores` on `heldout`, train items excluded.

    precision = hits / k; recall = hits / |relevant|; NDCG = DCG / ideal DCG with gain 1 per hit
    at rank r discounted by log2(r + 1). Means are over users with a relevant held-out item.
    """
    if k < 1:
        raise ConfigError(f"k: {k!r} must be >= 1")
    relevant = Interactions(
        users=heldout.users[heldout.ratings >= threshold],
        items=heldout.items[heldout.ratings >= threshold],
        ratings=heldout.ratings[heldout.ratings >= threshold],
    )
    evaluated = np.unique(relevant.users)
    train_items, train_starts = _rows_by_user(train, n_users)
    rel_items, rel_starts = _rows_by_user(relevant, n_users)
    kk = min(k, n_items)
    discounts = 1.0 / np.log2(np.arange(2, kk + 2))  # (k,)
    ideal = np.cumsum(discounts)  # ideal DCG for 1..k relevant items

    sums = np.zeros(3)
    batch = max(1, BATCH_CELLS // max(n_items, 1))
    for start in range(0, len(evaluated), batch):
        users = evaluated[start : start + batch]  # (B,)
        top = top_k(scores(users), _mask(users, train_items, train_starts, n_items), kk)  # (B, k)
        rel = _mask(users, rel_items, rel_starts, n_items)  # (B, I)
        hits = (top >= 0) & np.take_along_axis(rel, np.maximum(top, 0), axis=1)  # (B, k)
        n_rel = rel.sum(axis=1)  # (B,) >= 1
        n_hits = hits.sum(axis=1)
        dcg = (hits * discounts).sum(axis=1)
        sums += [
            (n_hits / k).sum(),
            (n_hits / n_rel).sum(),
            (dcg / ideal[np.minimum(n_rel, kk) - 1]).sum(),
        ]
    n = max(len(evaluated), 1)
    return RankingMetrics(
        k=k,
        precision=float(sums[0] / n),
        recall=float(sums[1] / n),
        ndcg=float(sums[2] / n),
        users=int(len(evaluated)),
        skipped=int(n_users - len(evaluated)),
        threshold=threshold,
    )
