"""Ranking with a rating model: scoring rules, and precision@k, recall@k and NDCG@k over held-out ratings.

A model tuned on rating MSE is often used to rank, and a low MSE does not promise a good top 10.
These metrics judge it as a recommender: for each user, every item not rated in train is a
candidate, the user's held-out ratings >= `threshold` are the relevant items, and users with no
relevant item are skipped. Scored a batch of users at a time with one numpy matrix multiply, and
each row's top k taken by `torch.topk`, so that it runs the same on ml-latest-small and on ml-25m.

Why rules other than the predicted rating: a rating model answers "how much would this user like
the film if they watched it", and ranks films that a handful of people rated highly first; which
held-out films a user rates is as much "which films are watched at all". Each `Ranking` rule below
orders items by a score built from the model's prediction and how many train ratings an item has
(`item_counts`); `mf.ranking_choice` picks one on the validation part. The predicted rating
itself is never changed: it is what `/predict` and every recommendation's `predicted_rating` give.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

import numpy as np
import torch

from mf.data import Interactions
from mf.errors import ConfigError

if TYPE_CHECKING:
    from mf.model import MFAdvanced

Scores = Callable[[np.ndarray], np.ndarray]
"""users (B,) -> scores of every item (B, n_items); higher is better."""

BATCH_CELLS = 1 << 24  # scores per batch (B * n_items): 64 MB of float32
RELEVANT_RATING = 4.0
"""A held-out rating at or above this makes the item relevant to its user: every ranking figure's default."""


@dataclass(frozen=True, eq=False)
class FactorScorer:
    """MFAdvanced's prediction as numpy arrays: every item's predicted rating for a batch of users.

    Held as plain numpy arrays, so that scoring a batch of users is one matrix multiply.
    """

    user_factors: np.ndarray  # (U, D)
    item_factors: np.ndarray  # (I, D)
    user_bias: np.ndarray | None  # (U,)
    item_bias: np.ndarray | None  # (I,)
    offset: float
    sigmoid_high: float | None  # None: the raw dot product, no squashing

    @classmethod
    def from_model(cls, model: MFAdvanced) -> FactorScorer:
        """The model's weights as numpy arrays (its prediction, item for item, without torch)."""

        def weights(name: str) -> np.ndarray:
            return getattr(model, name).weight.detach().cpu().numpy()

        return cls(
            user_factors=weights("user_emb"),
            item_factors=weights("item_emb"),
            user_bias=weights("user_bias")[:, 0] if model.use_bias else None,
            item_bias=weights("item_bias")[:, 0] if model.use_bias else None,
            offset=float(model.offset.detach().cpu()) if model.use_bias else 0.0,
            sigmoid_high=float(model.sigmoid_high) if model.use_sigmoid else None,
        )

    @property
    def n_items(self) -> int:
        """Items the model scores (rows of `item_factors`)."""
        return int(self.item_factors.shape[0])

    def squash(self, x: np.ndarray) -> np.ndarray:
        """Logits to ratings: sigmoid(x) * high, or x itself for a model without the sigmoid."""
        if self.sigmoid_high is not None:
            # sigmoid via tanh: no overflow warning for large |x|
            x = self.sigmoid_high * 0.5 * (1.0 + np.tanh(0.5 * x))
        return x

    def logits(self, users: np.ndarray) -> np.ndarray:
        """p_u . q_i + b_u + b_i + offset of every item (B, I): the prediction before the sigmoid."""
        x = self.user_factors[users] @ self.item_factors.T  # (B, I)
        if self.user_bias is not None and self.item_bias is not None:
            x += self.user_bias[users][:, None] + self.item_bias[None, :] + self.offset
        return x

    def __call__(self, users: np.ndarray) -> np.ndarray:
        return self.squash(self.logits(users))

    def standardised(self, users: np.ndarray) -> np.ndarray:
        """Each user's predicted ratings z-scored over the items (B, I): the blend's personal term."""
        return _zscore(self(users), axis=1)

    def last_batch_memo(self) -> FactorScorer:
        """A copy that keeps its last batch's logits, ratings and standardised ratings: many rankings
        scored on one batch of users (as `ranking_metrics_many` does) then share one matrix multiply,
        one sigmoid and one z-score."""
        return _LastBatchScorer(*(getattr(self, f.name) for f in fields(self)))

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Predicted rating of each (user, item) index pair (N,): the model's forward, in numpy."""
        x = np.einsum("nd,nd->n", self.user_factors[users], self.item_factors[items])  # (N,)
        if self.user_bias is not None and self.item_bias is not None:
            x = x + self.user_bias[users] + self.item_bias[items] + self.offset
        return self.squash(x)

    def fingerprint(self) -> str:
        """A hash of the weights: ties a ranking choice to the model it was chosen for."""
        h = hashlib.sha256()
        for a in (self.user_factors, self.item_factors, self.user_bias, self.item_bias):
            if a is not None:
                h.update(np.ascontiguousarray(a).tobytes())
        h.update(repr((self.offset, self.sigmoid_high)).encode())
        return h.hexdigest()[:16]


@dataclass(frozen=True, eq=False)
class _LastBatchScorer(FactorScorer):
    """FactorScorer.last_batch_memo(): results kept for the last `users` array (by identity)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "_memo", {})

    def _remember(self, kind: str, users: np.ndarray, compute: Callable[[], np.ndarray]) -> np.ndarray:
        memo = self._memo  # type: ignore[attr-defined]
        if memo.get(kind, (None,))[0] is not users:
            result = compute()
            result.flags.writeable = False  # shared by every ranking of the batch: none may change it
            memo[kind] = (users, result)
        return memo[kind][1]

    def logits(self, users: np.ndarray) -> np.ndarray:
        """FactorScorer.logits, computed once for the last `users` array (a read-only result)."""
        return self._remember("logits", users, lambda: super(_LastBatchScorer, self).logits(users))

    def __call__(self, users: np.ndarray) -> np.ndarray:
        return self._remember("ratings", users, lambda: self.squash(self.logits(users)))

    def standardised(self, users: np.ndarray) -> np.ndarray:
        """FactorScorer.standardised, computed once for the last `users` array (a read-only result)."""
        # Shared by every blend weight of the batch.
        return self._remember(
            "standardised", users, lambda: super(_LastBatchScorer, self).standardised(users)
        )


# ---------------------------------------------------------------- ranking rules
PREDICTED = "predicted"
POPULAR = "popular"
CONFIDENCE = "confidence"
SHRUNK_BIAS = "shrunk-bias"
BLEND = "blend"
RULES: dict[str, str] = {
    PREDICTED: "the predicted rating",
    POPULAR: "the number of train ratings of the item (most popular first; not personal)",
    CONFIDENCE: "predicted rating - {w} / sqrt(n_i + 1), n_i the item's train ratings",
    SHRUNK_BIAS: "predicted rating with the item bias shrunk to b_i * n_i / (n_i + {w})",
    BLEND: "the user's z-scored predicted rating + {w} * the z-scored log(1 + n_i) of the items",
}
"""What each rule scores; {w} is its weight."""
WEIGHTED = (CONFIDENCE, SHRUNK_BIAS, BLEND)


@dataclass(frozen=True)
class Ranking:
    """How the items are ordered for a user: one of `RULES`, with its weight w where it has one.

    Raises:
        ConfigError: on construction, for a rule not in RULES, a weighted rule (WEIGHTED) whose
            weight is not a finite number > 0, or a weight other than 0 for a rule that takes none.
    """

    rule: str
    weight: float = 0.0

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ConfigError(f"ranking: {self.rule!r} is not a rule; expected one of {', '.join(RULES)}")
        if self.rule in WEIGHTED and not (np.isfinite(self.weight) and self.weight > 0):
            raise ConfigError(f"ranking {self.rule}: weight {self.weight!r} must be a number > 0")
        if self.rule not in WEIGHTED and self.weight != 0:
            raise ConfigError(f"ranking {self.rule}: takes no weight (got {self.weight!r})")

    @classmethod
    def parse(cls, text: str) -> Ranking:
        """The Ranking `text` names: 'blend:1.5', 'confidence:8', 'popular', 'predicted' (what `str()`
        gives back).

        Raises:
            ConfigError: for an unknown rule, a weight that is not a number, a weighted rule without
                its weight, or a weight the rule does not allow (see the class).
        """
        rule, _, weight = str(text).partition(":")
        try:
            w = float(weight) if weight else 0.0
        except ValueError as e:
            raise ConfigError(f"ranking {text!r}: weight {weight!r} is not a number (e.g. blend:1.5)") from e
        if rule in WEIGHTED and not weight:
            raise ConfigError(f"ranking {text!r}: {rule} needs a weight, e.g. {rule}:1")
        return cls(rule, w)

    def __str__(self) -> str:
        return f"{self.rule}:{self.weight:g}" if self.rule in WEIGHTED else self.rule

    def describe(self) -> str:
        """What the ranking scores, in words (its RULES entry with the weight filled in)."""
        return RULES[self.rule].format(w=f"{self.weight:g}")

    def personal(self) -> bool:
        """Whether the order depends on the user (every rule but `popular`)."""
        return self.rule != POPULAR


def item_counts(train: Interactions, n_items: int) -> np.ndarray:
    """Ratings of each item in the training part (n_items,), as float64: what "popular" means here."""
    return np.bincount(train.items, minlength=n_items).astype(np.float64)


def _zscore(x: np.ndarray, axis: int | None = None) -> np.ndarray:
    mean = x.mean(axis=axis, keepdims=axis is not None)
    std = x.std(axis=axis, keepdims=axis is not None)
    return (x - mean) / np.maximum(std, 1e-12)


def ranking_scores(ranking: Ranking, scorer: FactorScorer, counts: np.ndarray) -> Scores:
    """The scores (B, n_items) that order items under `ranking`; higher first.

    `counts` are `item_counts(train)`: only train ratings count, so that the choice on a held-out
    part never sees that part. Per-item terms are computed here once, not per call.

    Args:
        ranking: the rule and weight.
        scorer: the model's scorer (a `last_batch_memo()` one lets several rankings share a batch's
            scores).
        counts: train ratings per item (n_items,).

    Returns:
        A function from user indices (B,) to scores (B, n_items); for `predicted`, `scorer` itself.

    Raises:
        ConfigError: for `shrunk-bias` where the model has no item bias.
    """
    rule, w = ranking.rule, ranking.weight
    dtype = scorer.item_factors.dtype  # per-item terms in the scores' precision: no float64 for float32
    if rule == PREDICTED:
        return scorer
    if rule == POPULAR:
        return lambda users: np.broadcast_to(counts, (len(users), len(counts))).copy()
    if rule == CONFIDENCE:
        penalty = (w / np.sqrt(counts + 1.0)).astype(dtype)  # (I,)
        return lambda users: scorer(users) - penalty
    if rule == SHRUNK_BIAS:
        if scorer.item_bias is None:
            raise ConfigError("ranking shrunk-bias: the model has no item bias (bias: false)")
        # (I,): b_i -> b_i * n / (n + w)
        shift = (scorer.item_bias * (counts / (counts + w) - 1.0)).astype(dtype)
        return lambda users: scorer.squash(scorer.logits(users) + shift)
    # BLEND: per-user standardised so that w means the same for every user and every model.
    log_pop = (w * _zscore(np.log1p(counts))).astype(dtype)  # (I,)
    return lambda users: scorer.standardised(users) + log_pop


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
        """Every field by name (k, precision, recall, ndcg, users, skipped, threshold)."""
        return asdict(self)


def top_k(scores: np.ndarray, exclude: np.ndarray, k: int) -> np.ndarray:
    """Indices (B, k') of the k highest scores per row, best first, never an excluded item.

    k' = min(k, n_items); a row with fewer than k' candidates is padded with -1. By `torch.topk`
    (threaded, one pass per row) rather than numpy's argpartition and a sort, which cost far more
    on large catalogues.

    Args:
        scores: (B, n_items) scores, higher better.
        exclude: (B, n_items) booleans, True for an item never to return.
        k: how many per row.
    """
    k = min(k, scores.shape[1])
    values, top = torch.topk(torch.from_numpy(np.where(exclude, -np.inf, scores)), k, dim=1)
    top = top.numpy()
    top[torch.isneginf(values).numpy()] = -1
    return top


_GROUPED: weakref.WeakKeyDictionary[Interactions, tuple[int, np.ndarray, np.ndarray]] = (
    weakref.WeakKeyDictionary()
)


def rows_by_user(part: Interactions, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Items of `part` grouped by user: (items sorted by user, start offset of each user (U+1,)).

    User u's items are `items[starts[u]:starts[u + 1]]`: a lookup per request, no mask of the data.
    The grouping is kept for as long as `part` lives (a part's arrays are never changed after it is
    made), so that a part grouped again (the export ranks the same training part several times) is
    not sorted again. The arrays returned are read-only.
    """
    kept = _GROUPED.get(part)
    if kept is not None and kept[0] == n_users:
        return kept[1], kept[2]
    order = np.argsort(part.users, kind="stable")
    starts = np.searchsorted(part.users[order], np.arange(n_users + 1))
    items = part.items[order]
    items.flags.writeable = starts.flags.writeable = False  # shared by every caller from now on
    _GROUPED[part] = (n_users, items, starts)
    return items, starts


def grouped_pairs(users: np.ndarray, items: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row in `users`, item) of every item the batch's users have in a part grouped by
    `rows_by_user`: user b's items, for every b, in one gather.

    Args:
        users: the batch's user indices (B,).
        items: the part's items grouped by user, as `rows_by_user` returns them.
        starts: the start of each user's items in `items` (n_users + 1,), likewise.

    Returns:
        Two arrays of one length: the row in `users` of each pair, and its item.
    """
    begins = starts[users]
    lengths = starts[users + 1] - begins
    rows = np.repeat(np.arange(len(users)), lengths)
    # positions begins[b] .. begins[b] + lengths[b] - 1 of every user b
    positions = np.arange(lengths.sum()) + np.repeat(begins - (np.cumsum(lengths) - lengths), lengths)
    return rows, items[positions]


def _mask(users: np.ndarray, items: np.ndarray, starts: np.ndarray, n_items: int) -> np.ndarray:
    """Boolean (B, n_items): True where the batch's user has the item in the grouped part."""
    rows, cols = grouped_pairs(users, items, starts)
    mask = np.zeros((len(users), n_items), dtype=bool)
    mask[rows, cols] = True
    return mask


def ranking_metrics(
    scores: Scores,
    *,
    train: Interactions,
    heldout: Interactions,
    n_users: int,
    n_items: int,
    k: int = 10,
    threshold: float = RELEVANT_RATING,
) -> RankingMetrics:
    """precision@k, recall@k, NDCG@k (binary gains) of `scores` on `heldout`, train items excluded.

    precision = hits / k; recall = hits / |relevant|; NDCG = DCG / ideal DCG with gain 1 per hit
    at rank r discounted by log2(r + 1). Means are over users with a relevant held-out item.

    Args:
        scores: user indices (B,) -> scores (B, n_items), higher first (`ranking_scores`).
        train: the training part, whose items are never candidates for their user.
        heldout: the held-out part to judge on.
        n_users: users in the data (index bound).
        n_items: items in the data (index bound).
        k: the cut-off, >= 1.
        threshold: a held-out rating at or above it makes its item relevant.

    Raises:
        ConfigError: where k < 1.
    """
    return ranking_metrics_many(
        {"": scores},
        train=train,
        heldout=heldout,
        n_users=n_users,
        n_items=n_items,
        k=k,
        threshold=threshold,
    )[""]


def ranking_metrics_many(
    scores: Mapping[str, Scores],
    *,
    train: Interactions,
    heldout: Interactions,
    n_users: int,
    n_items: int,
    k: int = 10,
    threshold: float = RELEVANT_RATING,
) -> dict[str, RankingMetrics]:
    """`ranking_metrics` of several rankings in one pass over the users: each batch's masks are built
    once, and rankings built on a `last_batch_memo()` scorer share its scores.

    Takes the arguments of `ranking_metrics`, with `scores` a mapping of names to score functions,
    and returns the RankingMetrics of each name.

    Raises:
        ConfigError: where k < 1.
    """
    if k < 1:
        raise ConfigError(f"k: {k!r} must be >= 1")
    relevant = Interactions(
        users=heldout.users[heldout.ratings >= threshold],
        items=heldout.items[heldout.ratings >= threshold],
        ratings=heldout.ratings[heldout.ratings >= threshold],
    )
    evaluated = np.unique(relevant.users)
    train_items, train_starts = rows_by_user(train, n_users)
    rel_items, rel_starts = rows_by_user(relevant, n_users)
    kk = min(k, n_items)
    discounts = 1.0 / np.log2(np.arange(2, kk + 2))  # (k,)
    ideal = np.cumsum(discounts)  # ideal DCG for 1..k relevant items

    sums = {name: np.zeros(3) for name in scores}
    batch = max(1, BATCH_CELLS // max(n_items, 1))
    for start in range(0, len(evaluated), batch):
        users = evaluated[start : start + batch]  # (B,)
        exclude = _mask(users, train_items, train_starts, n_items)  # (B, I)
        rel = _mask(users, rel_items, rel_starts, n_items)  # (B, I)
        n_rel = rel.sum(axis=1)  # (B,) >= 1
        for name, score in scores.items():
            top = top_k(score(users), exclude, kk)  # (B, k)
            hits = (top >= 0) & np.take_along_axis(rel, np.maximum(top, 0), axis=1)  # (B, k)
            n_hits = hits.sum(axis=1)
            dcg = (hits * discounts).sum(axis=1)
            sums[name] += [
                (n_hits / k).sum(),
                (n_hits / n_rel).sum(),
                (dcg / ideal[np.minimum(n_rel, kk) - 1]).sum(),
            ]
    n = max(len(evaluated), 1)
    return {
        name: RankingMetrics(
            k=k,
            precision=float(total[0] / n),
            recall=float(total[1] / n),
            ndcg=float(total[2] / n),
            users=int(len(evaluated)),
            skipped=int(n_users - len(evaluated)),
            threshold=threshold,
        )
        for name, total in sums.items()
    }
