"""LazyAdamW: dense AdamW's update on the rows a batch touches, weight decay owed and paid later."""

from __future__ import annotations

import pytest
import torch

from mf.errors import MFError
from mf.optim import LazyAdamW, group_ids

LR, WD = 0.05, 0.2


def _tables(seed: int = 0) -> list[torch.Tensor]:
    """Two sides of 3 rows: factors (width 3) and bias (width 1) of each, and a 1-element offset."""
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, w, generator=g) for w in (3, 1, 3, 1)] + [torch.rand(1, generator=g)]


def _lazy(params: list[torch.Tensor], **kw: object) -> LazyAdamW:
    # Rows 0-2 of the table are side 0's, rows 3-5 side 1's, each row its factors then its bias.
    u_f, u_b, i_f, i_b, offset = params
    return LazyAdamW([[u_f, u_b], [i_f, i_b]], [offset], lr=LR, weight_decay=WD, **kw)


def _rows(params: list[torch.Tensor]) -> torch.Tensor:
    """The 6 table rows (factors, bias) of `_tables`' parameters, as one (6, 4) tensor."""
    u_f, u_b, i_f, i_b, _ = params
    return torch.cat((torch.cat((u_f, u_b), 1), torch.cat((i_f, i_b), 1)))


def _dense_step(
    opt: torch.optim.AdamW, params: list[torch.Tensor], ids: list[int], row_grads: torch.Tensor, g_off: float
) -> None:
    """Dense AdamW given the same gradient: row_grads[k] summed into row ids[k], zero elsewhere."""
    full = torch.zeros(6, 4).index_add_(0, torch.tensor(ids), row_grads)
    u_f, u_b, i_f, i_b, offset = params
    u_f.grad, u_b.grad, i_f.grad, i_b.grad = full[:3, :3], full[:3, 3:], full[3:, :3], full[3:, 3:]
    offset.grad = torch.full_like(offset, g_off)
    opt.step()


def _run_both(steps: list[list[int]], idle: str = "dense") -> tuple[LazyAdamW, torch.Tensor, torch.Tensor]:
    """The same gradients through LazyAdamW and dense AdamW; returns both sets of rows (6, 4)."""
    dense = [t.requires_grad_() for t in _tables()]
    dense_opt = torch.optim.AdamW(dense, lr=LR, weight_decay=WD)
    params = _tables()
    lazy = _lazy(params, idle=idle)
    g = torch.Generator().manual_seed(1)
    for ids in steps:
        row_grads = torch.randn(len(ids), 4, generator=g)
        g_off = float(torch.randn(1, generator=g))
        lazy.step(lazy.gather(torch.tensor(ids)), row_grads, [torch.tensor([g_off])])
        _dense_step(dense_opt, dense, ids, row_grads, g_off)
    lazy.settle()
    # The offset (a dense parameter) gets plain AdamW either way.
    torch.testing.assert_close(params[4], dense[4].detach(), rtol=1e-6, atol=1e-7)
    return lazy, _rows(params), _rows([t.detach() for t in dense])


def test_lazy_adamw_is_dense_adamw_when_every_row_is_touched_every_step() -> None:
    _, got, want = _run_both([[0, 1, 2, 3, 4, 5]] * 8)
    # Same moments, same decay, same bias corrections: the same weights, to float rounding.
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_lazy_adamw_sums_the_gradients_of_a_row_seen_twice() -> None:
    # Row 4 occurs three times and row 0 twice in each batch: each gets the sum of its gradients.
    _, got, want = _run_both([[4, 0, 4, 1, 2, 3, 5, 4, 0]] * 5)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("idle", ["dense", "decay"])
def test_lazy_adamw_untouched_rows_decay_as_dense_adamw_decays_rows_with_zero_moments(idle: str) -> None:
    # Rows 2 and 5 are never touched: dense AdamW only decays them (their moments stay zero).
    _, got, want = _run_both([[0, 1, 3, 4]] * 6, idle=idle)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    # ... which is (1 - lr * wd) per step, six times.
    start = _rows(_tables())
    torch.testing.assert_close(got[[2, 5]], start[[2, 5]] * (1 - LR * WD) ** 6)


@pytest.mark.parametrize("start", [1, 200])
def test_lazy_adamw_idle_rows_coast_on_their_momentum_as_under_dense_adamw(start: int) -> None:
    # Rows 0 and 3 get gradients at steps 1..start+4, then go idle for 40 steps while others train.
    busy, idle_steps = [[0, 1, 2, 3, 4, 5]] * (start + 4), [[1, 2, 4, 5]] * 40
    _, dense_like, want = _run_both(busy + idle_steps)
    _, lazy_moments, _ = _run_both(busy + idle_steps, idle="decay")
    # Dense AdamW keeps moving an idle row by its stale momentum; "dense" pays those 40 moves in one
    # closed-form sum (one step's bias corrections for all 40: a few % off while they still change
    # fast, at the start), "decay" not at all.
    drift = (want[[0, 3]] - lazy_moments[[0, 3]]).abs().sum()
    error = (want[[0, 3]] - dense_like[[0, 3]]).abs().sum()
    assert drift > 0.02
    assert error < 0.005 * drift if start > 100 else error < 0.1 * drift
    # The rows that trained throughout are dense AdamW's (their moments came along exactly).
    torch.testing.assert_close(dense_like[[1, 2, 4, 5]], want[[1, 2, 4, 5]], rtol=1e-5, atol=1e-6)


def test_lazy_adamw_brings_a_row_up_to_date_when_a_batch_touches_it_again() -> None:
    params = _tables()
    lazy = _lazy(params, idle="decay")
    lazy.step(lazy.gather(torch.tensor([1])), torch.ones(1, 4), [torch.zeros(1)])
    after_first = _rows(params)[1].clone()
    for _ in range(3):  # three steps that do not touch row 1
        lazy.step(lazy.gather(torch.tensor([0])), torch.ones(1, 4), [torch.zeros(1)])
    # Until then the table still holds row 1 as of step 1 ...
    torch.testing.assert_close(_rows(params)[1], after_first)
    # ... and a batch touching it sees it with the three decays it was owed.
    rows = lazy.gather(torch.tensor([1]))
    torch.testing.assert_close(rows.weights[0], after_first * (1 - LR * WD) ** 3)


def test_lazy_adamw_idle_none_decays_only_the_rows_a_step_touches() -> None:
    params = _tables()
    start = _rows(params)
    lazy = _lazy(params, idle="none")
    for _ in range(4):
        lazy.step(lazy.gather(torch.tensor([0, 3])), torch.zeros(2, 4), [torch.zeros(1)])
    lazy.settle()
    got = _rows(params)
    # Zero gradients: touched rows 0 and 3 are only decayed, four times; the others not at all.
    torch.testing.assert_close(got[[0, 3]], start[[0, 3]] * (1 - LR * WD) ** 4)
    assert torch.equal(got[[1, 2, 4, 5]], start[[1, 2, 4, 5]])


def test_lazy_adamw_parameters_become_views_of_its_table() -> None:
    params = _tables()
    values = _rows(params)
    lazy = _lazy(params)
    # The values are kept, and the model reads what the optimiser writes, with no copy.
    assert torch.equal(_rows(params), values)
    lazy.table[4, 0] = 7.0
    lazy.table[2, 3] = -1.0
    assert params[2][1, 0] == 7.0 and params[1][2, 0] == -1.0
    # Rows are numbered across sides: side 1 starts at row 3.
    assert lazy.row_offsets == [0, 3] and lazy.n_rows == 6 and lazy.width == 4


def test_lazy_adamw_state_dict_resumes_the_same_steps() -> None:
    def steps(opt: LazyAdamW, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        for ids in ([0, 2, 5], [1, 2], [3, 3, 4]):
            opt.step(opt.gather(torch.tensor(ids)), torch.randn(len(ids), 4, generator=g), [torch.ones(1)])

    straight = _tables()
    opt = _lazy(straight)
    steps(opt, 0)
    steps(opt, 1)
    # A copy of the weights and the optimiser's state, loaded into a fresh optimiser ...
    first = _tables()
    saved = _lazy(first)
    steps(saved, 0)
    state = saved.state_dict()
    resumed = [t.clone() for t in first]
    fresh = _lazy(resumed)
    fresh.load_state_dict(state)
    steps(fresh, 1)
    # ... continues exactly as the run that never stopped.
    for got, want in zip(resumed, straight, strict=True):
        assert torch.equal(got, want)


def test_lazy_adamw_rejects_bad_settings_naming_them() -> None:
    u_f, u_b, i_f, _, _ = _tables()
    with pytest.raises(MFError, match="lr 0.0 breaks the rule lr > 0"):
        LazyAdamW([[u_f]], lr=0.0)
    with pytest.raises(MFError, match="idle 'sometimes' breaks the rule"):
        LazyAdamW([[u_f]], lr=0.1, idle="sometimes")  # type: ignore[arg-type]
    # Sides must be equally wide, since their rows share one table.
    with pytest.raises(MFError, match="widths \\[4, 3\\]"):
        LazyAdamW([[u_f, u_b], [i_f]], lr=0.1)


@pytest.mark.parametrize("n", [1, 7, 40_000])
def test_group_ids_gives_unique_rows_and_the_way_back(n: int) -> None:
    ids = torch.randint(0, 50, (n,), generator=torch.Generator().manual_seed(n))
    unique, inverse, order, offsets = group_ids(ids, 50)
    # Sorted distinct ids, and each id found again through inverse ...
    assert torch.equal(unique, torch.unique(ids))
    assert torch.equal(unique[inverse], ids)
    # ... and `order` lists the positions of each row's ids together, from `offsets` on.
    assert torch.equal(ids[order], torch.sort(ids, stable=True).values)
    assert torch.equal(ids[order][offsets], unique)
