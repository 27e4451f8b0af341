"""MFAdvanced: the tutorial's biased matrix factorisation, with its ablation switches.

`row_grads` is the model's training objective and its gradient written out by hand, for the
row-sparse optimiser (`mf.optim.LazyAdamW`): on CPU at batch 8192, autograd's graph and the per-op
overhead of a backward pass cost more than the arithmetic.
"""

from __future__ import annotations

import torch
from torch import nn


def sigmoid_range(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Squash `x` elementwise into (low, high): sigmoid(x) * (high - low) + low; the tutorial uses low=0.

    Args:
        x: any tensor of logits.
        low: the lower bound of the result.
        high: the upper bound of the result.

    Returns:
        A tensor of the shape of `x`.
    """
    return torch.sigmoid(x) * (high - low) + low


class MFAdvanced(nn.Module):
    """rating(u, i) = sigmoid_range(p_u . q_i + b_u + b_i + offset, 0, high).

    Biases are 1-wide embeddings (not indexed Parameters) so that, with `sparse=True`,
    every per-user and per-item parameter gets a sparse gradient and only the rows of
    a batch are touched by the optimiser.

    Args:
        n_users: rows of the user tables (user indices are 0..n_users-1).
        n_items: rows of the item tables.
        emb_dim: width of the user and item factors.
        bias: add a user bias, an item bias and a global offset (all start at 0).
        init: initialise the factors uniform in [0, init_range] (else PyTorch's N(0, 1)).
        init_range: upper end of that uniform init.
        sigmoid: squash the output into (0, sigmoid_high) (else the raw dot product plus biases).
        sigmoid_high: upper bound of the squashed output.
        sparse: make every table an nn.Embedding with sparse gradients (for SparseAdam).
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        *,
        emb_dim: int = 32,
        bias: bool = True,
        init: bool = True,
        init_range: float = 0.05,
        sigmoid: bool = True,
        sigmoid_high: float = 5.5,
        sparse: bool = False,
    ) -> None:
        super().__init__()
        self.sparse = sparse
        self.use_bias = bias
        self.use_sigmoid = sigmoid
        self.sigmoid_high = sigmoid_high
        self.user_emb = nn.Embedding(n_users, emb_dim, sparse=sparse)
        self.item_emb = nn.Embedding(n_items, emb_dim, sparse=sparse)
        if bias:
            self.user_bias = nn.Embedding(n_users, 1, sparse=sparse)
            self.item_bias = nn.Embedding(n_items, 1, sparse=sparse)
            nn.init.zeros_(self.user_bias.weight)
            nn.init.zeros_(self.item_bias.weight)
            self.offset = nn.Parameter(torch.zeros(1))
        if init:
            nn.init.uniform_(self.user_emb.weight, 0.0, init_range)
            nn.init.uniform_(self.item_emb.weight, 0.0, init_range)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """nn.Module's forward: the predicted rating (B,) of each (user, item) index pair."""
        return self.predict_with_factors(users, items)[0]

    def predict_with_factors(
        self, users: torch.Tensor, items: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Predictions (B,) and the batch's user (B, D) and item (B, D) factors, for the L2 term.

        Args:
            users: user indices (B,), an integer tensor on the model's device.
            items: item indices (B,), likewise.

        Returns:
            (predictions, user factors, item factors), in the autograd graph.
        """
        p = self._lookup(self.user_emb, users)  # (B, D)
        q = self._lookup(self.item_emb, items)  # (B, D)
        x = (p * q).sum(dim=1)  # (B,)
        if self.use_bias:
            b_u = self._lookup(self.user_bias, users).squeeze(1)  # (B,)
            b_i = self._lookup(self.item_bias, items).squeeze(1)  # (B,)
            x = x + b_u + b_i + self.offset
        if self.use_sigmoid:
            x = sigmoid_range(x, 0.0, self.sigmoid_high)
        return x, p, q

    def _lookup(self, table: nn.Embedding, index: torch.Tensor) -> torch.Tensor:
        """Rows of a table. Dense: index_select, whose backward (index_add) runs faster on CPU than
        nn.Embedding's; sparse: the embedding op, which alone gives sparse gradients."""
        if self.sparse:
            return table(index)
        return table.weight.index_select(0, index)

    @property
    def row_width(self) -> int:
        """Columns of one user's (or item's) row for `row_grads`: the factors, then the bias if any."""
        return self.user_emb.embedding_dim + int(self.use_bias)

    def row_tables(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The parameters of a user's row and of an item's row, in `row_grads`' column order."""
        if self.use_bias:
            return [self.user_emb.weight, self.user_bias.weight], [
                self.item_emb.weight,
                self.item_bias.weight,
            ]
        return [self.user_emb.weight], [self.item_emb.weight]

    def dense_parameters(self) -> list[torch.Tensor]:
        """The parameters that are not per-user or per-item rows: the global offset, if any."""
        return [self.offset] if self.use_bias else []

    @torch.no_grad()
    def row_grads(
        self, user_rows: torch.Tensor, item_rows: torch.Tensor, ratings: torch.Tensor, *, l2: float
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """The batch's training objective, differentiated by hand (no autograd graph).

        The objective is the trainer's: mean squared error of the predictions plus
        `l2 * mean(|p_u|^2 + |q_i|^2)` over the batch.

        Args:
            user_rows: each rating's user row (B, row_width): factors, then bias.
            item_rows: each rating's item row (B, row_width), likewise.
            ratings: the true ratings (B,).
            l2: the weight of the L2 term (0: none).

        Returns:
            The sum of squared errors (a 0-d tensor), the gradient of each rating's user row then
            item row (2B, row_width), and the gradients of `dense_parameters()` (a list, empty
            without bias).
        """
        n, d = ratings.shape[0], self.user_emb.embedding_dim
        p, q = user_rows[:, :d], item_rows[:, :d]
        x = (p * q).sum(1)  # (B,)
        if self.use_bias:
            x = x + user_rows[:, d] + item_rows[:, d] + self.offset
        if self.use_sigmoid:
            s = torch.sigmoid(x)
            err = s * self.sigmoid_high - ratings
            g = err * (s * (1 - s)) * (2.0 * self.sigmoid_high / n)  # d objective / d x, (B,)
        else:
            err = x - ratings
            g = err * (2.0 / n)
        grads = torch.empty((2 * n, user_rows.shape[1]), dtype=user_rows.dtype, device=user_rows.device)
        # d x / d user row = the item row (factors); d x / d bias = 1, written over the bias column.
        torch.mul(item_rows, g.unsqueeze(1), out=grads[:n])
        torch.mul(user_rows, g.unsqueeze(1), out=grads[n:])
        if self.use_bias:
            grads.view(2, n, -1)[:, :, d] = g
        if l2 > 0:
            grads[:n, :d].add_(p, alpha=2.0 * l2 / n)
            grads[n:, :d].add_(q, alpha=2.0 * l2 / n)
        dense = [g.sum().reshape(1)] if self.use_bias else []
        return torch.dot(err, err), grads, dense

    @torch.no_grad()
    def score_all_items(self, user: int) -> torch.Tensor:
        """Predicted rating of every item for one user index (n_items,), for recommending."""
        items = torch.arange(self.item_emb.num_embeddings, device=self.user_emb.weight.device)
        users = torch.full_like(items, user)
        return self(users, items)
