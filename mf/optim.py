"""LazyAdamW: AdamW whose step costs what the batch touches, for tables of per-user and per-item rows.

Dense AdamW updates every parameter at every step: on MovieLens-sized tables (millions of rows) that
is most of an epoch, although a batch of 8192 ratings touches a few thousand rows. This optimiser
keeps, for each row of the tables it is given, the weights, both Adam moments and the step at which
the row was last brought up to date, side by side in one table row, and at each step reads and
writes only the rows of the batch (one gather, one scatter, with dense index ops). The caller gives
it the gradient of each occurrence of a row in the batch (`TouchedRows.inverse` says which row);
the sum per row is taken here, so a row seen twice gets the sum of its two gradients, as autograd
would give it.

Semantics, against `torch.optim.AdamW` on the same parameters (same lr, betas, eps, weight decay):

- A row the batch touches gets exactly AdamW's update (the fused kernel, with the global step count
  for the bias corrections).
- What dense AdamW does to a row a step does not touch is owed and paid later. Each row keeps the
  step at which it was last brought up to date; when a batch touches it again, or on `settle()`,
  it is first brought up to date, then updated. `settle()` does it for every row (one pass over the
  table); the trainer calls it before each evaluation and checkpoint, so the weights anyone reads
  are current. How a row is brought up to date after k idle steps is `idle`:
  - `"dense"` (the default): as dense AdamW would have moved it. Dense AdamW multiplies the row by
    (1 - lr * weight_decay) at every step and keeps moving it by its stale momentum, while the
    moments decay by beta1 and beta2 per step. Here the k decays are one multiplication, the
    moments are multiplied by beta1**k and beta2**k, and the momentum's k moves are one closed-form
    sum (a geometric series in (1 - lr * wd) and beta1 / sqrt(beta2)), exact but for two
    simplifications: the bias corrections of one step stand for all k (the step about ten into the
    idle run, where the series' weight is centred: within 0.1 % of dense AdamW's moves after the
    first few dozen steps, a few % before), and eps is scaled with the second moment. So dense
    AdamW's regularisation (which tuned configurations rely on) and its momentum are kept,
    whatever the batch size.
  - `"decay"`: the k weight decays only (exact); the moments stay as they were, as in TensorFlow
    Addons' LazyAdam. A rare row's momentum then lasts about ten *touches* instead of ten steps,
    which trains worse than dense AdamW at small batches.
  - `"none"`: nothing; weight decay only at the steps that touch a row, as many sparse optimisers
    do. Rarely seen users and items are then barely regularised at all.
  With every row touched at every step the three are dense AdamW.

The decay owed by a row is counted in steps at one lr and weight decay: change `lr` only right
after `settle()` (as the trainer does between the pieces of a schedule).
Dense parameters (the model's global offset) get plain AdamW in the same fused call.
"""

from __future__ import annotations

import contextlib
import math
import mmap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch.nn import functional as F
from torch.optim.adamw import adamw

from mf.errors import MFError

IdleRule = Literal["dense", "decay", "none"]
IDLE_RULES: tuple[str, ...] = ("dense", "decay", "none")

# Rows are padded to a multiple of 16 bytes, so that a GPU writes them back as complex128 words
# (index_put_ costs per element: a 400-byte row moves as 25 elements instead of 100); a CPU writes
# each row as one numpy element of that many bytes (one memcpy a row, several times faster).
_WORD = torch.complex128
_FLOATS_PER_WORD = 4
_HUGE_PAGE = 1 << 21
_SETTLE_ROWS = 1 << 16


@dataclass(frozen=True, eq=False)
class TouchedRows:
    """The distinct rows a batch touches, read from the table and brought up to date.

    `inverse[k]` is the position in `unique` of the k-th id given to `gather`; `order` and `offsets`
    group the ids by row (for the per-row gradient sums). `blocks` holds the rows' weights, exp_avg
    and exp_avg_sq, each (K, width), contiguous copies that `step` updates and writes back through
    `rows` into the table.
    """

    unique: torch.Tensor  # (K,) int64 row numbers, ascending
    inverse: torch.Tensor  # (N,) int64 in [0, K)
    order: torch.Tensor  # (N,) int64: positions of the ids, grouped by row
    offsets: torch.Tensor  # (K,) int64: where each row's group starts in `order`
    blocks: torch.Tensor  # (3, K, width): weights, exp_avg, exp_avg_sq
    rows: torch.Tensor  # (K, row): the rows as read, written back once updated

    @property
    def weights(self) -> torch.Tensor:
        """The rows' weights (K, width), brought up to date: `blocks[0]`, which `step` updates."""
        return self.blocks[0]


class LazyAdamW:
    """Row-sparse AdamW over `sides`: lists of 2-D parameters whose rows belong together.

    Each side is one kind of row (users, items); its parameters are laid side by side in one row
    (the factors and the bias of a user), so every side must have the same total width. Rows are
    numbered across sides in order: side 0's rows first, then side 1's (see `row_offsets`). The
    parameters' storage moves into the optimiser's table (`param.data` becomes a view of it), so
    the model reads what the optimiser writes, with no copy; `dense` parameters stay where they are.

    Args:
        sides: per kind of row, its 2-D parameters (all of one dtype and device; the parameters of
            a side have as many rows; every side as wide in total).
        dense: parameters updated by plain AdamW at every step (the model's global offset).
        lr: learning rate (> 0).
        weight_decay: AdamW's decoupled weight decay (>= 0).
        betas: Adam's (beta1, beta2), each in [0, 1).
        eps: Adam's epsilon (> 0).
        idle: how an idle row is brought up to date (`IDLE_RULES`, see the module).

    Raises:
        MFError: where a setting breaks its rule or the parameters do not fit the rules above.
    """

    def __init__(
        self,
        sides: Sequence[Sequence[torch.Tensor]],
        dense: Sequence[torch.Tensor] = (),
        *,
        lr: float,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        idle: IdleRule = "dense",
    ) -> None:
        _check_args(lr=lr, weight_decay=weight_decay, betas=betas, eps=eps, idle=idle)
        if not sides or not all(sides):
            raise MFError("LazyAdamW: sides must be a non-empty list of non-empty lists of 2-D parameters")
        first = sides[0][0]
        widths, counts = [], []
        for side in sides:
            for p in side:
                if p.dim() != 2 or p.dtype != first.dtype or p.device != first.device:
                    raise MFError(
                        f"LazyAdamW: every table parameter must be 2-D, {first.dtype}, on {first.device}; "
                        f"got {tuple(p.shape)} {p.dtype} on {p.device}"
                    )
                if p.shape[0] != side[0].shape[0]:
                    raise MFError("LazyAdamW: the parameters of one side must have the same number of rows")
            widths.append(sum(int(p.shape[1]) for p in side))
            counts.append(int(side[0].shape[0]))
        if len(set(widths)) != 1:
            raise MFError(f"LazyAdamW: every side must be as wide (columns per row); got widths {widths}")
        self.lr, self.weight_decay, self.betas, self.eps, self.idle = lr, weight_decay, betas, eps, idle
        self.width = width = widths[0]
        self.row_offsets = [sum(counts[:k]) for k in range(len(counts))]
        self.n_rows = sum(counts)
        # Row layout: weights | exp_avg | exp_avg_sq | last step (a float: exact below 2**24 steps) | pad.
        self._last_col = 3 * width
        row = -(-(3 * width + 1) // _FLOATS_PER_WORD) * _FLOATS_PER_WORD
        self.table = _zeros_table(self.n_rows, row, dtype=first.dtype, device=first.device)
        # On CPU, the table as one numpy element per row (for the write-back, see _WORD).
        self._rows_np = (
            self.table.numpy().view(np.dtype((np.void, row * self.table.element_size()))).reshape(self.n_rows)
            if self.table.device.type == "cpu" and self.table.dtype in (torch.float32, torch.float64)
            else None
        )
        for side, start in zip(sides, self.row_offsets, strict=True):
            col = 0
            for p in side:
                rows, cols = p.shape
                view = self.table[start : start + rows, col : col + cols]
                view.copy_(p.detach())
                p.data = view  # the model now reads the table
                col += cols
        self.dense = list(dense)
        self._dense_moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in self.dense]
        self.steps = 0
        # One step tensor per parameter of the fused call; the functional AdamW increments them.
        self._step_tensors = [torch.zeros((), device=first.device) for _ in range(1 + len(self.dense))]

    @property
    def dense_moments(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(exp_avg, exp_avg_sq) of each dense parameter, for a step taken elsewhere (mf.fused_step)."""
        return self._dense_moments

    def count_step(self, n: int = 1) -> None:
        """Count `n` steps that mf.fused_step took on the table in place of `gather` and `step`."""
        self.steps += n
        for t in self._step_tensors:
            t.fill_(self.steps)

    # ---------------------------------------------------------------- one step
    def gather(self, ids: torch.Tensor) -> TouchedRows:
        """The distinct rows among `ids` (N,) (int64 row numbers in [0, n_rows)), read from the table
        and brought up to date as of the last step, for one `step`."""
        unique, inverse, order, offsets = group_ids(ids, self.n_rows)
        rows = self.table.index_select(0, unique)  # (K, row)
        k, w = len(unique), self.width
        blocks = rows[:, : 3 * w].view(k, 3, w).transpose(0, 1).contiguous()  # (3, K, width)
        self._catch_up(blocks[0], blocks[1], blocks[2], rows[:, self._last_col])
        return TouchedRows(
            unique=unique, inverse=inverse, order=order, offsets=offsets, blocks=blocks, rows=rows
        )

    def step(self, rows: TouchedRows, grads: torch.Tensor, dense_grads: Sequence[torch.Tensor] = ()) -> None:
        """One AdamW step on the rows `gather` returned, written back into the table.

        Args:
            rows: what `gather` returned for this step's ids.
            grads: the gradient (N, width) of each id given to `gather`, in order; a row's
                gradients are summed.
            dense_grads: the gradient of each dense parameter, in order.

        Raises:
            MFError: where there are not as many dense gradients as dense parameters.
        """
        if len(dense_grads) != len(self.dense):
            raise MFError(
                f"LazyAdamW.step: {len(self.dense)} dense gradients expected, got {len(dense_grads)}"
            )
        # Sum the gradients of each row's occurrences: (K, width).
        row_grads = F.embedding_bag(rows.order, grads, rows.offsets, mode="sum")
        weights, exp_avg, exp_avg_sq = rows.blocks
        self.steps += 1
        adamw(
            [weights, *self.dense],
            [row_grads, *dense_grads],
            [exp_avg, *(m for m, _ in self._dense_moments)],
            [exp_avg_sq, *(v for _, v in self._dense_moments)],
            [],
            self._step_tensors,
            fused=True,
            amsgrad=False,
            beta1=self.betas[0],
            beta2=self.betas[1],
            lr=self.lr,
            weight_decay=self.weight_decay,
            eps=self.eps,
            maximize=False,
        )
        k, w, out = len(rows.unique), self.width, rows.rows
        out[:, : 3 * w].view(k, 3, w).copy_(rows.blocks.transpose(0, 1))
        out[:, self._last_col] = self.steps
        if self._rows_np is not None:
            self._rows_np[rows.unique.numpy()] = out.numpy().view(self._rows_np.dtype).reshape(k)
        else:
            self.table.view(_WORD)[rows.unique] = out.view(_WORD)

    def settle(self) -> None:
        """Bring every row up to date (one pass over the table), so its weights are current."""
        w = self.width
        for start in range(0, self.n_rows, _SETTLE_ROWS):  # in slices: bounded temporaries
            t = self.table[start : start + _SETTLE_ROWS]
            self._catch_up(t[:, :w], t[:, w : 2 * w], t[:, 2 * w : 3 * w], t[:, self._last_col])
            t[:, self._last_col].fill_(self.steps)

    def _catch_up(
        self, weights: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, last: torch.Tensor
    ) -> None:
        """Apply, in place, what `idle` says the steps since each row's `last` step did to it."""
        if self.idle == "none" or self.steps == 0:
            return
        owed = self.steps - last  # (K,) idle steps, exact in float below 2**24
        d = self._decay_factor
        decay = torch.pow(d, owed)
        if self.idle == "decay":
            weights.mul_(decay.unsqueeze(1))
            return
        # Dense AdamW over k idle steps (g = 0): m_i = b1**i m, v_i = b2**i v, and
        #   w_k = d**k w - lr * sum_{i=1..k} d**(k-i) * (b1**i m / bc1_i) / (b2**(i/2) sqrt(v / bc2_i) + eps)
        # With one step's bc1, bc2 for all i and eps scaled like sqrt(v), the sum is
        #   lr * S(k) * (m / bc1) / (sqrt(v / bc2) + eps),  S(k) = sum_i d**(k-i) r**i,  r = b1 / sqrt(b2).
        b1, b2 = self.betas
        r = b1 / math.sqrt(b2)
        rk = torch.pow(r, owed)
        series = (decay - rk).mul_(r / (d - r)) if abs(d - r) > 1e-6 else owed * rk
        # Bias corrections of one step for all: the series' centre of mass, 1 / (1 - r) steps in.
        centre = last + owed.clamp(max=1 / (1 - r))
        bc1 = 1 - torch.pow(b1, centre)
        sqrt_bc2 = (1 - torch.pow(b2, centre)).sqrt_()
        denom = exp_avg_sq.sqrt().div_(sqrt_bc2.unsqueeze(1)).add_(self.eps)
        weights.mul_(decay.unsqueeze(1)).addcdiv_(
            exp_avg * (series * self.lr / bc1).unsqueeze(1), denom, value=-1
        )
        exp_avg.mul_(torch.pow(b1, owed).unsqueeze(1))
        exp_avg_sq.mul_(torch.pow(b2, owed).unsqueeze(1))

    @property
    def _decay_factor(self) -> float:
        return 1.0 - self.lr * self.weight_decay

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Moments, the step counts and the settings (the weights are the model's to save)."""
        w = self.width
        return {
            "kind": "lazy_adamw",
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "betas": list(self.betas),
            "eps": self.eps,
            "idle": self.idle,
            "steps": self.steps,
            "exp_avg": self.table[:, w : 2 * w].contiguous(),
            "exp_avg_sq": self.table[:, 2 * w : 3 * w].contiguous(),
            "last_step": self.table[:, self._last_col].contiguous(),
            "dense": [{"exp_avg": m.clone(), "exp_avg_sq": v.clone()} for m, v in self._dense_moments],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put back what `state_dict` returned: the moments, each row's last step and the step count.

        The settings (lr, weight decay, betas, eps, idle) stay this optimiser's own; the weights are
        the model's to load.

        Raises:
            MFError: where `state` is not that of a LazyAdamW over as many rows of the same width,
                or has another number of dense parameters.
        """
        w = self.width
        expected = (self.n_rows, w)
        if state.get("kind") != "lazy_adamw" or tuple(state["exp_avg"].shape) != expected:
            raise MFError(
                f"LazyAdamW.load_state_dict: not the state of a LazyAdamW over {self.n_rows} rows of width {w}"
            )
        if len(state["dense"]) != len(self.dense):
            raise MFError("LazyAdamW.load_state_dict: the number of dense parameters differs")
        self.steps = int(state["steps"])
        self.table[:, w : 2 * w].copy_(state["exp_avg"])
        self.table[:, 2 * w : 3 * w].copy_(state["exp_avg_sq"])
        self.table[:, self._last_col].copy_(state["last_step"])
        for (m, v), saved in zip(self._dense_moments, state["dense"], strict=True):
            m.copy_(saved["exp_avg"])
            v.copy_(saved["exp_avg_sq"])
        for t in self._step_tensors:
            t.fill_(self.steps)


def group_ids(
    ids: torch.Tensor, n_rows: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort ids (N,) < n_rows into (unique, inverse, order, offsets), as `TouchedRows` holds them.

    One stable sort does it all: `order` sorts the ids, runs of equal ids give the rest. On CPU the
    sort is numpy's radix sort on 16-bit digits (two passes below 2**32 rows), faster at a batch's
    size than torch's CPU sort, and the rest is numpy too; on a GPU it is all torch.

    Args:
        ids: int64 row numbers (N,), each in [0, n_rows).
        n_rows: rows of the table, which bounds the radix sort's passes.

    Returns:
        (unique (K,) ascending, inverse (N,), order (N,), offsets (K,)), int64 tensors on the
        device of `ids`.
    """
    n = ids.shape[0]
    if ids.device.type == "cpu":  # numpy: a few microseconds a call where torch takes tens
        ids_np = ids.numpy()
        order_np = _radix_argsort(ids_np, n_rows)
        sorted_np = ids_np[order_np]
        first_np = np.empty(n, dtype=bool)
        first_np[:1] = True
        np.not_equal(sorted_np[1:], sorted_np[:-1], out=first_np[1:])
        offsets_np = np.flatnonzero(first_np)
        inverse_np = np.empty(n, dtype=np.int64)
        inverse_np[order_np] = np.cumsum(first_np) - 1
        unique_np = sorted_np[offsets_np]
        return (
            torch.from_numpy(unique_np),
            torch.from_numpy(inverse_np),
            torch.from_numpy(order_np),
            torch.from_numpy(offsets_np),
        )
    order = torch.sort(ids, stable=True).indices
    sorted_ids = ids.index_select(0, order)
    first = torch.empty(n, dtype=torch.bool, device=ids.device)
    first[:1] = True
    torch.ne(sorted_ids[1:], sorted_ids[:-1], out=first[1:])
    offsets = first.nonzero().squeeze(1)
    unique = sorted_ids.index_select(0, offsets)
    inverse = torch.empty(n, dtype=torch.int64, device=ids.device)
    inverse[order] = torch.cumsum(first, 0).sub_(1)
    return unique, inverse, order, offsets


def _radix_argsort(ids: np.ndarray, n_rows: int) -> np.ndarray:
    """Stable argsort of non-negative ids < n_rows by 16-bit digits, least significant first."""
    order = np.argsort((ids & 0xFFFF).astype(np.uint16), kind="stable")  # numpy: radix sort
    shift = 16
    while n_rows > 1 << shift:
        digit = (ids[order] >> shift) & 0xFFFF
        order = order[np.argsort(digit.astype(np.uint16), kind="stable")]
        shift += 16
    return order


def _zeros_table(rows: int, cols: int, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A zeroed (rows, cols) table; on Linux CPUs in memory backed by 2 MB pages where the kernel
    allows it (madvise), since a step's random row reads and writes miss the TLB on 4 kB pages."""
    nbytes = rows * cols * torch.empty((), dtype=dtype).element_size()
    if device.type != "cpu" or not hasattr(mmap, "MADV_HUGEPAGE") or nbytes < _HUGE_PAGE:
        return torch.zeros(rows, cols, dtype=dtype, device=device)
    buffer = mmap.mmap(-1, -(-nbytes // _HUGE_PAGE) * _HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    with contextlib.suppress(OSError):
        buffer.madvise(mmap.MADV_HUGEPAGE)
    # The tensor holds a reference to the mapping, which is unmapped when the tensor is freed.
    return torch.frombuffer(buffer, dtype=dtype, count=rows * cols).view(rows, cols)


def _check_args(*, lr: float, weight_decay: float, betas: tuple[float, float], eps: float, idle: str) -> None:
    rules = [
        ("lr", lr, math.isfinite(lr) and lr > 0, "> 0"),
        ("weight_decay", weight_decay, math.isfinite(weight_decay) and weight_decay >= 0, ">= 0"),
        ("betas", betas, len(betas) == 2 and all(0 <= b < 1 for b in betas), "two numbers in [0, 1)"),
        ("eps", eps, math.isfinite(eps) and eps > 0, "> 0"),
        ("idle", idle, idle in IDLE_RULES, f"one of {', '.join(IDLE_RULES)}"),
    ]
    for name, value, ok, rule in rules:
        if not ok:
            raise MFError(f"LazyAdamW: {name} {value!r} breaks the rule {name} {rule}")


__all__ = ["IDLE_RULES", "LazyAdamW", "TouchedRows", "group_ids"]
