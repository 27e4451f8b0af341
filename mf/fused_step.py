"""Training steps of MFAdvanced under LazyAdamW as one compiled call over many batches (CPU, numba).

The torch path (`Trainer._lazy_step`: `LazyAdamW.gather`, `MFAdvanced.row_grads`, `LazyAdamW.step`)
runs a few dozen tensor ops a step, each a pass over the batch's rows with its own Python and
dispatch cost; at 8192 ratings a step that overhead and the copies between ops cost more than the
arithmetic. Here a whole slice of a pass (`FusedStep.train`: its positions in the training columns)
is one compiled call, which per batch runs four loops, reading and writing the optimiser's table
in place:

1. the batch's ratings, gathered from the columns through the positions, and its distinct rows,
   found through a per-row slot array (no sort);
2. each of them brought up to date as `LazyAdamW._catch_up` does (its `idle` rule);
3. the objective's gradient by hand, as `MFAdvanced.row_grads` computes it, summed per row;
4. AdamW's update of each row (torch's formula: decoupled decay, bias-corrected moments), and of
   the global offset.

So it computes what the torch path computes, to float rounding (tests/test_fused_step.py holds it
to the torch path and to dense AdamW). Two things make it cost what the batch touches and little
more. What the idle rule owes a row after k idle steps (powers of the decay and of the betas, the
momentum's closed-form sum, the bias corrections) is read from tables computed once per lr and
weight decay (`idle_tables`) instead of half a dozen powers per row; rows idle longer than the
tables reach are computed as before. And each loop asks for the rows it will need a few iterations
ahead (mf.prefetch), since on tables larger than the caches a step otherwise waits on one random
row read after another. It is used where it applies: a CPU, float32 tables, numba installed;
elsewhere the torch path runs. numba compiles the function on first use and caches it beside this
file, so a process pays that once and later processes load it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from mf.model import MFAdvanced
    from mf.optim import LazyAdamW

try:
    import numba

    from mf.numba_threads import use_torch_threads
    from mf.prefetch import prefetch, prefetch_1d
except ImportError:  # the torch path serves
    numba = None

IDLE_CODES = {"none": 0, "decay": 1, "dense": 2}
IDLE_TABLE_STEPS = 1 << 15
"""Idle runs up to this many steps are read from `idle_tables` (at 10M ratings and batch 8192, 27
epochs; at ml-latest-small's size, thousands); longer ones are computed."""
_AHEAD = 8  # rows (or ratings) prefetched ahead in each loop: enough to keep a few reads in flight
_AHEAD_GATHER = 16  # ratings ahead in the gather, whose reads are single words


def idle_tables(
    lr: float, weight_decay: float, b1: float, b2: float, steps: int = IDLE_TABLE_STEPS
) -> np.ndarray:
    """(6, steps) float64: what `LazyAdamW._catch_up` applies to a row idle for k steps, for k < steps.

    Rows 0-3 by k: the weight decay (1 - lr * wd)**k, lr times the momentum's sum S(k), b1**k, b2**k.
    Rows 4-5 by the step `last` at which the row was last updated: 1 / (1 - b1**c) and
    1 / sqrt(1 - b2**c) at c = last + 1 / (1 - r), the bias corrections of an idle run longer than
    1 / (1 - r) steps (shorter runs use those of the current step). Same formulas as `_catch_up`.

    Args:
        lr: the learning rate.
        weight_decay: AdamW's decoupled weight decay.
        b1: Adam's beta1.
        b2: Adam's beta2.
        steps: the columns of the tables: idle runs (and last steps) below it are read from them.
    """
    k = np.arange(steps, dtype=np.float64)
    d = 1.0 - lr * weight_decay
    r = b1 / math.sqrt(b2)
    # A diverging config (lr * weight_decay > 2) overflows here as its weights will: inf, no warning.
    with np.errstate(over="ignore", invalid="ignore"):
        decay, rk = d**k, r**k
        series = (decay - rk) * (r / (d - r)) if abs(d - r) > 1e-6 else k * rk
        centre = k + 1.0 / (1.0 - r)
        return np.stack(
            [decay, series * lr, b1**k, b2**k, 1.0 / (1.0 - b1**centre), 1.0 / np.sqrt(1.0 - b2**centre)]
        )


def available(model: MFAdvanced, optimizer: LazyAdamW) -> bool:
    """Whether the fused step can run this model and optimiser (a CPU, float32 tables, numba)."""
    return (
        numba is not None and optimizer.table.device.type == "cpu" and optimizer.table.dtype == torch.float32
    )


class FusedStep:
    """`train(users, items, ratings, positions, batch_size)` trains a slice of a pass in place;
    calling it, `fused(users, items, ratings)`, one batch. Both return the squared-error sum.

    Args:
        model: the model whose tables `optimizer` holds (its offset is updated in place too).
        optimizer: the LazyAdamW over the model's rows; its table is trained in place, and its
            step count and dense moments are kept up to date.
        l2: the weight of the objective's L2 term on the batch's factors.

    Raises:
        RuntimeError: where it cannot run (see `available`), or the table has 2**31 rows or more.
    """

    table_steps = IDLE_TABLE_STEPS  # the idle runs read from tables (tests shorten it)

    def __init__(self, model: MFAdvanced, optimizer: LazyAdamW, *, l2: float) -> None:
        if not available(model, optimizer):
            raise RuntimeError("FusedStep needs numba and LazyAdamW's table as float32 on the CPU")
        if optimizer.n_rows >= 2**31:
            raise RuntimeError(f"FusedStep: {optimizer.n_rows} table rows; the slot array holds int32")
        self.model, self.opt, self.l2 = model, optimizer, float(l2)
        self.table = optimizer.table.numpy()
        self.slot = np.full(optimizer.n_rows, -1, dtype=np.int32)  # row -> its place in a batch, or -1
        self._tables_key: tuple[float, ...] | None = None
        self._tables = np.zeros((6, 0))
        self._capacity = 0

    def settle(self) -> None:
        """`LazyAdamW.settle()` compiled: every row of the table brought up to date, in one parallel pass."""
        opt = self.opt
        use_torch_threads()
        b1, b2 = opt.betas
        _settle(
            self.table,
            int(opt.width),
            int(opt.steps),
            IDLE_CODES[opt.idle],
            self._idle_tables(),
            float(opt.lr),
            float(opt.weight_decay),
            float(b1),
            float(b2),
            float(opt.eps),
        )

    def _idle_tables(self) -> np.ndarray:
        opt = self.opt
        key = (float(opt.lr), float(opt.weight_decay), *map(float, opt.betas), float(self.table_steps))
        if key != self._tables_key:  # lr changes between epochs only (a schedule)
            self._tables = idle_tables(*key[:4], steps=self.table_steps)
            self._tables_key = key
        return self._tables

    def __call__(self, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor) -> torch.Tensor:
        """One step on this batch (int32 ids, float32 ratings); its squared-error sum."""
        n = int(ratings.shape[0])
        return torch.tensor(self.train(users, items, ratings, torch.arange(n, dtype=torch.int32), n))

    def train(
        self,
        users: torch.Tensor,
        items: torch.Tensor,
        ratings: torch.Tensor,
        positions: torch.Tensor,
        batch_size: int,
    ) -> float:
        """Train the batches `positions[s : s + batch_size]` of these columns, a step each, in order,
        in one compiled call (no gathered copy, no Python between steps); their squared-error sum.

        Args:
            users: the training part's user indices (N,), int32, on the CPU.
            items: its item indices (N,), int32.
            ratings: its ratings (N,), float32.
            positions: the positions in those columns to train on, in order (int32).
            batch_size: ratings per step (the last batch may be smaller).
        """
        opt, model = self.opt, self.model
        use_torch_threads()
        b1, b2 = opt.betas
        batch_size = min(int(batch_size), max(1, int(positions.shape[0])))
        if batch_size > self._capacity:  # the step's scratch, kept between calls
            self._batch_rows = np.empty((2, batch_size), dtype=np.int64)
            self._batch_ratings = np.empty(batch_size, dtype=np.float32)
            self._uniq = np.empty(2 * batch_size, dtype=np.int64)
            self._grads = np.empty((2 * batch_size, opt.width), dtype=np.float32)
            self._row_decay = np.empty((2 * batch_size, 2), dtype=np.float32)
            self._capacity = batch_size
        offset = model.offset.data.numpy() if model.use_bias else np.zeros(1, dtype=np.float32)
        m, v = opt.dense_moments[0] if model.use_bias else (None, None)
        moments = np.zeros(2, dtype=np.float32) if m is None else np.array([float(m), float(v)], np.float32)
        sq = _train(
            self.table,
            self.slot,
            users.numpy(),
            items.numpy(),
            ratings.numpy(),
            positions.numpy(),
            batch_size,
            int(opt.row_offsets[1]),
            int(model.user_emb.embedding_dim),
            int(opt.width),
            bool(model.use_bias),
            bool(model.use_sigmoid),
            float(model.sigmoid_high),
            self.l2,
            offset,
            moments,
            float(opt.lr),
            float(opt.weight_decay),
            float(b1),
            float(b2),
            float(opt.eps),
            int(opt.steps),
            IDLE_CODES[opt.idle],
            self._idle_tables(),
            self._batch_rows,
            self._batch_ratings,
            self._uniq,
            self._grads,
            self._row_decay,
        )
        opt.count_step(-(-int(positions.shape[0]) // batch_size))
        if m is not None:
            m.fill_(float(moments[0]))
            v.fill_(float(moments[1]))
        return float(sq)


def _prefetch_row_py(table, row, row_end):  # pragma: no cover - compiled by numba below
    for c in range(0, row_end, 16):
        prefetch(table, row, c)
    prefetch(table, row, row_end)


def _catch_up_py(table, row, width, steps, idle, tables, now_bc, lr, wd, b1, b2, eps):  # pragma: no cover
    """Bring one row's weights up to date as `LazyAdamW._catch_up` does; return the factors its
    moments owe (b1**k, b2**k), which the caller applies (the step folds them into its update).
    `now_bc` is `_bias_corrections(steps, ...)`, computed once per call by the caller."""
    f32 = np.float32
    if idle == 0 or steps == 0:
        return f32(1.0), f32(1.0)
    last = table[row, 3 * width]
    owed = steps - last  # a whole number of steps
    if owed <= 0.0:
        return f32(1.0), f32(1.0)
    dfac = 1.0 - lr * wd
    n_tab = tables.shape[1]
    in_tables = owed < n_tab
    w = table[row, :width]
    decay = f32(tables[0, int(owed)]) if in_tables else f32(dfac**owed)
    if idle == 1:
        for c in range(width):
            w[c] *= decay
        return f32(1.0), f32(1.0)
    r = b1 / math.sqrt(b2)
    short_run = 1.0 / (1.0 - r)  # idle runs up to this long take the current step's bias corrections
    if in_tables:
        series_lr, m_decay, v_decay = tables[1, int(owed)], tables[2, int(owed)], tables[3, int(owed)]
    else:
        rk = r**owed
        series_lr = ((decay - rk) * (r / (dfac - r)) if abs(dfac - r) > 1e-6 else owed * rk) * lr
        m_decay, v_decay = b1**owed, b2**owed
    if owed <= short_run:
        bc1, bc2 = now_bc
    elif last < n_tab:
        bc1, bc2 = tables[4, int(last)], tables[5, int(last)]
    else:
        centre = last + short_run
        bc1, bc2 = 1.0 / (1.0 - b1**centre), 1.0 / math.sqrt(1.0 - b2**centre)
    coef = f32(series_lr * bc1)
    inv_sqrt_bc2 = f32(bc2)
    e = f32(eps)
    m = table[row, width : 2 * width]
    v = table[row, 2 * width : 3 * width]
    for c in range(width):
        w[c] = w[c] * decay - m[c] * coef / (np.sqrt(v[c]) * inv_sqrt_bc2 + e)
    return f32(m_decay), f32(v_decay)


def _bias_corrections_py(steps, b1, b2):  # pragma: no cover - compiled by numba below
    """1 / (1 - b1**steps) and 1 / sqrt(1 - b2**steps): those of the current step (1 before any)."""
    if steps == 0:
        return 1.0, 1.0
    return 1.0 / (1.0 - b1**steps), 1.0 / math.sqrt(1.0 - b2**steps)


def _settle_py(table, width, steps, idle, tables, lr, wd, b1, b2, eps):  # pragma: no cover
    """Every row brought up to date (LazyAdamW.settle), in parallel."""
    last_col = 3 * width
    row_end = table.shape[1] - 1
    n = table.shape[0]
    now_bc = _bias_corrections(steps, b1, b2)
    for row in numba.prange(n):
        if row + _AHEAD < n:
            _prefetch_row(table, row + _AHEAD, row_end)
        m_decay, v_decay = _catch_up(table, row, width, steps, idle, tables, now_bc, lr, wd, b1, b2, eps)
        if m_decay != 1.0 or v_decay != 1.0:
            for c in range(width, 2 * width):
                table[row, c] *= m_decay
            for c in range(2 * width, 3 * width):
                table[row, c] *= v_decay
        table[row, last_col] = steps


def _train_py(
    table,
    slot,
    users_col,
    items_col,
    ratings_col,
    positions,
    batch_size,
    item_row0,
    d,
    width,
    use_bias,
    use_sigmoid,
    high,
    l2,
    offset,
    moments,
    lr,
    wd,
    b1,
    b2,
    eps,
    steps,
    idle,
    tables,
    batch_rows,
    batch_ratings,
    uniq,
    grads,
    row_decay,
):  # pragma: no cover - compiled by numba below
    """The batches `positions[s : s + batch_size]` of the columns, one step each, in order."""
    f32 = np.float32
    e = f32(eps)
    last_col = 3 * width
    row_end = table.shape[1] - 1
    total = positions.shape[0]
    sq_total = 0.0
    for start in range(0, total, batch_size):
        n = min(batch_size, total - start)
        # 1. The batch's ratings, gathered through `positions` (in parallel), then its distinct
        # rows: users first, then items (their rows follow the users').
        for j in numba.prange(n):
            if j + _AHEAD_GATHER < n:
                ahead = positions[start + j + _AHEAD_GATHER]
                prefetch_1d(users_col, ahead)
                prefetch_1d(items_col, ahead)
                prefetch_1d(ratings_col, ahead)
            at = positions[start + j]
            batch_rows[0, j] = users_col[at]
            batch_rows[1, j] = items_col[at] + item_row0
            batch_ratings[j] = ratings_col[at]
        k = 0
        for side in range(2):
            for j in range(n):
                row = batch_rows[side, j]
                if slot[row] < 0:
                    slot[row] = k
                    uniq[k] = row
                    k += 1
        # 2. Each distinct row brought up to date (LazyAdamW._catch_up), in parallel: rows are
        # distinct. The weights now, since the gradient reads them; the moments' decay waits for
        # step 4, which writes the moments anyway (one write of them a step instead of two).
        now_bc = _bias_corrections(steps, b1, b2)
        for j in numba.prange(k):
            if j + _AHEAD < k:
                _prefetch_row(table, uniq[j + _AHEAD], row_end)
            g = grads[j]
            for c in range(width):
                g[c] = f32(0.0)
            m_decay, v_decay = _catch_up(
                table, uniq[j], width, steps, idle, tables, now_bc, lr, wd, b1, b2, eps
            )
            row_decay[j, 0] = m_decay
            row_decay[j, 1] = v_decay
        # 3. The objective's gradient, summed per row: users' rows and items' rows are distinct, so
        # one thread takes each side, and each computes every rating's prediction itself (a second
        # pass over the rows to share them between the threads costs more than the dot products).
        off = f32(offset[0]) if use_bias else f32(0.0)
        scale = f32(2.0 * high / n) if use_sigmoid else f32(2.0 / n)
        two_l2 = f32(2.0 * l2 / n)
        sums = np.zeros((2, 2))  # per side: squared errors, d objective / d offset
        for side in numba.prange(2):
            other_side = 1 - side
            sq_side = 0.0
            g_side = 0.0
            for j in range(n):
                if j + _AHEAD < n:
                    mine_ahead = batch_rows[side, j + _AHEAD]
                    for c in range(0, width, 16):
                        prefetch(table, mine_ahead, c)
                        prefetch(table, batch_rows[other_side, j + _AHEAD], c)
                        prefetch(grads, slot[mine_ahead], c)
                mine = batch_rows[side, j]
                a = table[mine, :d]
                b = table[batch_rows[other_side, j], :d]
                x = f32(0.0)
                for c in range(d):
                    x += a[c] * b[c]
                if use_bias:
                    x += table[mine, d] + table[batch_rows[other_side, j], d] + off
                if use_sigmoid:
                    s = f32(1.0) / (f32(1.0) + np.exp(-x))
                    err = s * f32(high) - batch_ratings[j]
                    g = err * (s * (f32(1.0) - s)) * scale
                else:
                    err = x - batch_ratings[j]
                    g = err * scale
                sq_side += err * err
                g_side += g
                acc = grads[slot[mine]]
                for c in range(d):
                    acc[c] += g * b[c] + two_l2 * a[c]
                if use_bias:
                    acc[d] += g
            sums[side, 0] = sq_side
            sums[side, 1] = g_side
        # 4. AdamW (torch's formula) on each distinct row, in parallel, then on the offset.
        t = steps + 1
        step_size = f32(lr / (1.0 - b1**t))
        inv_sqrt_bc2 = f32(1.0 / math.sqrt(1.0 - b2**t))
        keep, one_b1, one_b2, fb2 = f32(1.0 - lr * wd), f32(1.0 - b1), f32(1.0 - b2), f32(b2)
        for j in numba.prange(k):
            if j + _AHEAD < k:
                _prefetch_row(table, uniq[j + _AHEAD], row_end)
            row = uniq[j]
            w = table[row, :width]
            m = table[row, width : 2 * width]
            v = table[row, 2 * width : 3 * width]
            gr = grads[j]
            md, vd = row_decay[j, 0], row_decay[j, 1]
            for c in range(width):
                mo = m[c] * md
                mc = mo + (gr[c] - mo) * one_b1
                vc = v[c] * vd * fb2 + one_b2 * gr[c] * gr[c]
                m[c] = mc
                v[c] = vc
                w[c] = w[c] * keep - step_size * mc / (np.sqrt(vc) * inv_sqrt_bc2 + e)
            table[row, last_col] = t
            slot[row] = -1
        if use_bias:
            g_offset = sums[0, 1]
            mo = moments[0] + (g_offset - moments[0]) * (1.0 - b1)
            vo = moments[1] * b2 + (1.0 - b2) * g_offset * g_offset
            moments[0] = mo
            moments[1] = vo
            offset[0] = offset[0] * (1.0 - lr * wd) - (lr / (1.0 - b1**t)) * mo / (
                math.sqrt(vo) / math.sqrt(1.0 - b2**t) + eps
            )
        sq_total += sums[0, 0]
        steps = t
    return sq_total


# No nnan / ninf: a diverging run must still show its NaN (the trainer checks every epoch's loss).
_FASTMATH = {"contract", "arcp", "reassoc", "nsz", "afn"}
if numba is not None:
    _prefetch_row = numba.njit(cache=True, nogil=True, inline="always")(_prefetch_row_py)
    _bias_corrections = numba.njit(cache=True, nogil=True, inline="always")(_bias_corrections_py)
    _catch_up = numba.njit(cache=True, nogil=True, fastmath=_FASTMATH, inline="always")(_catch_up_py)
    _train = numba.njit(cache=True, nogil=True, parallel=True, fastmath=_FASTMATH)(_train_py)
    _settle = numba.njit(cache=True, nogil=True, parallel=True, fastmath=_FASTMATH)(_settle_py)
