"""NDCG@k of the predicted rating on the validation part, cheap enough to measure every epoch.

The same figure as `mf.ranking.ranking_metrics(...).ndcg` for the predicted-rating ranking (train
items excluded, held-out ratings >= `threshold` relevant, binary gains, users without a relevant
item skipped), computed in torch on the training device: everything that does not change between
epochs (the users, their train items, their relevant items, the ideal DCGs) is laid out once here,
so that an epoch costs one matrix multiply and one top-k per batch of users. Items are ordered by
the logit p_u . q_i + b_i: the user's bias, the offset and the sigmoid do not change a user's order.
"""

from __future__ import annotations

import numpy as np
import torch

from mf.data import Interactions
from mf.errors import ConfigError
from mf.model import MFAdvanced
from mf.ranking import BATCH_CELLS, RELEVANT_RATING, grouped_pairs, rows_by_user


class EpochNDCG:
    """`EpochNDCG(train, val, n_users, n_items, k)(model)` -> mean NDCG@k over the users with a relevant
    val rating (0.0 when there is none).

    Args:
        train: the training part, whose items are never candidates for their user.
        val: the validation part to judge on.
        n_users: users in the data (index bound).
        n_items: items in the data (index bound).
        k: the cut-off (at most n_items is used).
        threshold: a val rating at or above it makes its item relevant.
        device: where the precomputed batches live: the model's device.

    Raises:
        ConfigError: where k < 1.
    """

    def __init__(
        self,
        train: Interactions,
        val: Interactions,
        *,
        n_users: int,
        n_items: int,
        k: int,
        threshold: float = RELEVANT_RATING,
        device: torch.device | str = "cpu",
    ) -> None:
        if k < 1:
            raise ConfigError(f"val_ndcg_k: {k!r} must be >= 1")
        keep = np.asarray(val.ratings) >= threshold
        rel_users, rel_items = np.asarray(val.users)[keep], np.asarray(val.items)[keep]
        evaluated = np.unique(rel_users)
        self.users = len(evaluated)
        self.n_items, self.k = n_items, min(k, n_items)
        discounts = 1.0 / np.log2(np.arange(2, self.k + 2))
        self._discounts = torch.as_tensor(discounts, dtype=torch.float32, device=device)
        ideal = np.cumsum(discounts)
        train_items, train_starts = rows_by_user(train, n_users)
        rel = Interactions(users=rel_users, items=rel_items, ratings=np.asarray(val.ratings)[keep])
        rel_sorted, rel_starts = rows_by_user(rel, n_users)
        batch = max(1, BATCH_CELLS // max(n_items, 1))
        self._batches = []
        for start in range(0, len(evaluated), batch):
            users = evaluated[start : start + batch]
            train_rows, train_cols = grouped_pairs(users, train_items, train_starts)
            rel_rows, rel_cols = grouped_pairs(users, rel_sorted, rel_starts)
            n_rel = rel_starts[users + 1] - rel_starts[users]
            self._batches.append(
                tuple(
                    torch.as_tensor(a, device=device)
                    for a in (
                        users.astype(np.int64),
                        train_rows.astype(np.int64) * n_items + train_cols,  # flat (B * I) positions
                        np.sort(rel_rows.astype(np.int64) * n_items + rel_cols),
                        ideal[np.minimum(n_rel, self.k) - 1].astype(np.float32),
                    )
                )
            )

    @torch.no_grad()
    def __call__(self, model: MFAdvanced) -> float:
        if not self.users:
            return 0.0
        items = model.item_emb.weight.detach()
        item_bias = model.item_bias.weight.detach()[:, 0] if model.use_bias else None
        total = 0.0
        for users, train_flat, rel_flat, ideal in self._batches:
            scores = model.user_emb.weight.detach().index_select(0, users) @ items.T  # (B, I)
            if item_bias is not None:
                scores += item_bias
            scores.view(-1).index_fill_(0, train_flat, -torch.inf)
            values, top = scores.topk(self.k, dim=1)  # (B, k), best first
            rows = torch.arange(len(users), device=top.device)[:, None] * self.n_items
            hits = torch.isin(rows + top, rel_flat, assume_unique=True) & ~torch.isneginf(values)
            total += float(((hits * self._discounts).sum(dim=1) / ideal).sum())
        return total / self.users
