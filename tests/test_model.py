"""MFAdvanced: shapes, the sigmoid range, init, and each ablation switch."""

from __future__ import annotations

import pytest
import torch

from mf.model import MFAdvanced, sigmoid_range


def _batch(n_users: int, n_items: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(n_users, (size,), generator=g), torch.randint(n_items, (size,), generator=g)


def test_sigmoid_range_squashes_into_low_high() -> None:
    x = torch.tensor([-1e9, 0.0, 1e9])
    # sigmoid(0) is the middle; very large inputs reach the ends.
    assert sigmoid_range(x, 0.0, 5.5).tolist() == [0.0, 2.75, 5.5]
    assert sigmoid_range(torch.tensor([0.0]), 1.0, 5.0).item() == 3.0


def test_mf_advanced_output_has_one_prediction_per_pair() -> None:
    model = MFAdvanced(10, 7, emb_dim=4)
    users, items = _batch(10, 7, 13)
    # (B,) in, (B,) out, float32.
    out = model(users, items)
    assert out.shape == (13,)
    assert out.dtype == torch.float32


def test_mf_advanced_predict_with_factors_returns_the_batch_factors() -> None:
    model = MFAdvanced(10, 7, emb_dim=4)
    users, items = _batch(10, 7, 5)
    pred, p, q = model.predict_with_factors(users, items)
    # The factors are the rows of the embedding tables, (B, D), for the L2 term.
    assert pred.shape == (5,) and p.shape == (5, 4) and q.shape == (5, 4)
    assert torch.equal(p, model.user_emb.weight[users])
    assert torch.equal(q, model.item_emb.weight[items])


@pytest.mark.parametrize("high", [5.0, 5.5])
def test_mf_advanced_with_sigmoid_predicts_inside_zero_high(high: float) -> None:
    torch.manual_seed(0)
    model = MFAdvanced(50, 40, emb_dim=8, sigmoid_high=high)
    with torch.no_grad():  # spread the outputs over the whole range
        model.user_bias.weight.uniform_(-4, 4)
        model.item_bias.weight.uniform_(-4, 4)
    out = model(*_batch(50, 40, 1000))
    # Strictly inside (0, high), and actually using both halves of it.
    assert out.min() > 0 and out.max() < high
    assert out.min() < 0.25 * high and out.max() > 0.75 * high


def test_mf_advanced_init_is_uniform_in_zero_init_range() -> None:
    torch.manual_seed(0)
    model = MFAdvanced(200, 300, emb_dim=16, init_range=0.05)
    for table in (model.user_emb.weight, model.item_emb.weight):
        # Every weight in [0, 0.05], spread over the interval.
        assert table.min() >= 0 and table.max() <= 0.05
        assert table.min() < 0.001 and table.max() > 0.049
    # Biases and the offset start at zero, so the first prediction is about sigmoid(0) * high.
    assert not model.user_bias.weight.any() and not model.item_bias.weight.any()
    assert model.offset.item() == 0.0


def test_mf_advanced_without_init_keeps_pytorchs_normal_init() -> None:
    torch.manual_seed(0)
    w = MFAdvanced(200, 300, emb_dim=16, init=False).user_emb.weight
    # nn.Embedding's N(0, 1): negative values and a spread near 1.
    assert w.min() < 0
    assert 0.9 < w.std().item() < 1.1


def test_mf_advanced_bias_switch_adds_or_removes_the_bias_parameters() -> None:
    with_bias = {name for name, _ in MFAdvanced(3, 4).named_parameters()}
    without = {name for name, _ in MFAdvanced(3, 4, bias=False).named_parameters()}
    # bias=True: user and item biases (1-wide embeddings) and a global offset.
    assert with_bias == {
        "user_emb.weight",
        "item_emb.weight",
        "user_bias.weight",
        "item_bias.weight",
        "offset",
    }
    # bias=False: the two factor tables only.
    assert without == {"user_emb.weight", "item_emb.weight"}


def test_mf_advanced_without_sigmoid_is_dot_product_plus_biases() -> None:
    model = MFAdvanced(2, 2, emb_dim=2, sigmoid=False)
    with torch.no_grad():
        model.user_emb.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, -1.0]]))
        model.item_emb.weight.copy_(torch.tensor([[0.5, 1.0], [2.0, 2.0]]))
        model.user_bias.weight.copy_(torch.tensor([[0.1], [0.2]]))
        model.item_bias.weight.copy_(torch.tensor([[-1.0], [1.0]]))
        model.offset.fill_(3.0)
    out = model(torch.tensor([0, 1, 1]), torch.tensor([1, 0, 1]))
    # (u0, i1): 1*2 + 2*2 + 0.1 + 1 + 3 = 10.1; (u1, i0): 1.5 - 1 + 0.2 - 1 + 3 = 2.7;
    # (u1, i1): 6 - 2 + 0.2 + 1 + 3 = 8.2; nothing squashed, so outside [0, 5.5] is possible.
    assert out.tolist() == pytest.approx([10.1, 2.7, 8.2])


def test_mf_advanced_without_sigmoid_or_bias_is_the_plain_dot_product() -> None:
    model = MFAdvanced(3, 3, emb_dim=4, sigmoid=False, bias=False, init=False)
    users, items = torch.tensor([0, 2]), torch.tensor([1, 1])
    expected = (model.user_emb.weight[users] * model.item_emb.weight[items]).sum(1)
    assert torch.allclose(model(users, items), expected)


@pytest.mark.parametrize("sparse", [True, False])
def test_mf_advanced_sparse_switch_gives_sparse_embedding_grads(sparse: bool) -> None:
    model = MFAdvanced(20, 30, emb_dim=4, sparse=sparse)
    users, items = _batch(20, 30, 8)
    model(users, items).sum().backward()
    tables = [model.user_emb, model.item_emb, model.user_bias, model.item_bias]
    # sparse=True: every per-user / per-item table (factors and biases) gets a sparse gradient,
    # which SparseAdam needs; sparse=False: all dense (AdamW).
    assert [t.weight.grad.is_sparse for t in tables] == [sparse] * 4
    # The global offset is one dense parameter either way.
    assert not model.offset.grad.is_sparse


def test_mf_advanced_sparse_and_dense_lookups_predict_the_same() -> None:
    torch.manual_seed(1)
    dense = MFAdvanced(20, 30, emb_dim=4)
    sparse = MFAdvanced(20, 30, emb_dim=4, sparse=True)
    sparse.load_state_dict(dense.state_dict())
    users, items = _batch(20, 30, 16)
    # The switch only changes how rows are looked up, not the result.
    assert torch.equal(dense(users, items), sparse(users, items))


def test_score_all_items_scores_every_item_for_one_user() -> None:
    torch.manual_seed(0)
    model = MFAdvanced(5, 9, emb_dim=4)
    scores = model.score_all_items(3)
    # (n_items,), the same as predicting (user 3, item i) for every item i, with no graph kept.
    assert scores.shape == (9,)
    assert torch.equal(scores, model(torch.full((9,), 3), torch.arange(9)).detach())
    assert not scores.requires_grad


@pytest.mark.parametrize(("bias", "sigmoid"), [(True, True), (False, True), (True, False), (False, False)])
def test_row_grads_are_autograds_gradients_of_the_training_objective(bias: bool, sigmoid: bool) -> None:
    torch.manual_seed(0)
    model = MFAdvanced(6, 5, emb_dim=3, bias=bias, sigmoid=sigmoid)
    with torch.no_grad():
        model.user_emb.weight.uniform_(-1, 1)
        if bias:
            model.item_bias.weight.uniform_(-1, 1)
            model.offset.fill_(0.3)
    users, items = torch.tensor([0, 1, 1, 5, 2]), torch.tensor([4, 4, 0, 2, 2])
    ratings, l2 = torch.tensor([4.0, 3.5, 1.0, 5.0, 2.5]), 0.2
    # Autograd on the rows of the batch (one leaf per rating, so repeated rows stay apart).
    p = model.user_emb.weight[users].detach().requires_grad_()
    q = model.item_emb.weight[items].detach().requires_grad_()
    x = (p * q).sum(1)
    if bias:
        b_u = model.user_bias.weight[users, 0].detach().requires_grad_()
        b_i = model.item_bias.weight[items, 0].detach().requires_grad_()
        offset = model.offset.detach().clone().requires_grad_()
        x = x + b_u + b_i + offset
    pred = sigmoid_range(x, 0.0, 5.5) if sigmoid else x
    mse = torch.nn.functional.mse_loss(pred, ratings)
    (mse + l2 * (p.pow(2).sum(1) + q.pow(2).sum(1)).mean()).backward()

    def rows(emb: torch.Tensor, b: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor:
        return torch.cat((emb[index], b[index]), 1) if b is not None else emb[index]

    user_rows = rows(model.user_emb.weight, model.user_bias.weight if bias else None, users).detach()
    item_rows = rows(model.item_emb.weight, model.item_bias.weight if bias else None, items).detach()
    sq_err, grads, dense = model.row_grads(user_rows, item_rows, ratings, l2=l2)
    # The sum of squared errors is the MSE times the batch size ...
    torch.testing.assert_close(sq_err, mse.detach() * len(ratings))
    # ... and each rating's user row and item row get autograd's gradients (factors, then bias).
    want_user = torch.cat((p.grad, b_u.grad[:, None]), 1) if bias else p.grad
    want_item = torch.cat((q.grad, b_i.grad[:, None]), 1) if bias else q.grad
    torch.testing.assert_close(grads, torch.cat((want_user, want_item)))
    # The offset is the one dense parameter, with a bias; none without.
    assert len(dense) == int(bias) and model.row_width == 3 + int(bias)
    if bias:
        torch.testing.assert_close(dense[0], offset.grad)
