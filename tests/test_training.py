"""Trainer: one epoch per call, seeded, resumable exactly from a checkpoint."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from mf.config import TrainConfig, lr_at
from mf.data import Dataset, Interactions
from mf.errors import MFError
from mf.metrics import EPOCH, EPOCH_SECONDS, TRAIN_LOSS, VAL_MAE, VAL_MSE, VAL_NDCG, VAL_RMSE
from mf.ranking import FactorScorer, ranking_metrics
from mf.training import Trainer, TrainingDiverged, load_model, read_checkpoint
from tests.files import N_ITEMS, N_USERS
from tests.files import tiny_dataset as _tiny_dataset


def _config(**changes: object) -> TrainConfig:
    """Small and fast: a few batches per epoch of the 260 training ratings, on one CPU thread
    (torch's thread pool only adds overhead here, and much more on a busy machine)."""
    base = TrainConfig(device="cpu", threads=1, emb_dim=4, batch_size=32, lr=0.05, epochs=5)
    return base.replace(**changes)


@pytest.fixture(autouse=True)
def _keep_torch_threads() -> Iterator[None]:
    """`threads` sets torch's process-wide thread count; give later tests back the old one."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _without_time(history: list[dict[str, float]]) -> list[dict[str, float]]:
    """Everything in a history but the wall-clock time, which no two runs share."""
    return [{k: v for k, v in m.items() if k != EPOCH_SECONDS} for m in history]


def test_trainer_loss_decreases_over_epochs() -> None:
    history = Trainer(_config(epochs=10), _tiny_dataset()).fit()
    losses = [m[TRAIN_LOSS] for m in history]
    # One entry per epoch, numbered from 1.
    assert [m[EPOCH] for m in history] == list(range(1, 11))
    # The model learns: training loss falls to a fraction of its start, and so does val MSE.
    assert losses[-1] < 0.25 * losses[0]
    assert min(losses[1:]) < losses[0]
    assert history[-1][VAL_MSE] < 0.5 * history[0][VAL_MSE]


def test_trainer_same_seed_gives_identical_history() -> None:
    data = _tiny_dataset()
    first = Trainer(_config(seed=7), data).fit()
    second = Trainer(_config(seed=7), data).fit()
    # Init and batch order are both seeded: the histories match to the bit.
    assert _without_time(first) == _without_time(second)


def test_trainer_different_seed_gives_different_history() -> None:
    data = _tiny_dataset()
    a = Trainer(_config(seed=0), data).fit()
    b = Trainer(_config(seed=1), data).fit()
    assert [m[TRAIN_LOSS] for m in a] != [m[TRAIN_LOSS] for m in b]


def test_trainer_does_not_disturb_the_global_torch_rng() -> None:
    # A reused Ray worker runs many trials: seeding a trainer must leave the process's RNG alone.
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    Trainer(_config(seed=5), _tiny_dataset()).run_epoch()
    assert torch.equal(torch.rand(3), expected)


def test_run_epoch_returns_the_metric_constants() -> None:
    trainer = Trainer(_config(), _tiny_dataset())
    m = trainer.run_epoch()
    # Exactly the keys named in mf.metrics, for the CLI, the benchmark and Tune alike.
    assert set(m) == {EPOCH, TRAIN_LOSS, VAL_MSE, VAL_RMSE, VAL_MAE, EPOCH_SECONDS}
    assert m[EPOCH] == 1 and trainer.epoch == 1
    assert m[VAL_RMSE] == pytest.approx(math.sqrt(m[VAL_MSE]))
    assert m[EPOCH_SECONDS] > 0
    # Each call is one more epoch, and the history keeps them all.
    assert trainer.run_epoch()[EPOCH] == 2
    assert len(trainer.history) == 2


def test_val_ndcg_k_reports_the_val_ndcg_that_mf_ranking_computes_every_epoch() -> None:
    data = _tiny_dataset()
    trainer = Trainer(_config(val_ndcg_k=5, epochs=3), data)
    for _ in range(3):
        m = trainer.run_epoch()
        # The figure a ranking objective selects on: NDCG@5 of the predicted rating on val, train
        # items excluded, held-out ratings >= 4 relevant, the same as mf.ranking's evaluation.
        expected = ranking_metrics(
            FactorScorer.from_model(trainer.model),
            train=data.train,
            heldout=data.val,
            n_users=data.n_users,
            n_items=data.n_items,
            k=5,
        )
        assert expected.users > 0 and 0 <= m[VAL_NDCG] <= 1
        assert m[VAL_NDCG] == pytest.approx(expected.ndcg, abs=1e-6)
    # Off by default: an epoch then costs what it did.
    assert VAL_NDCG not in Trainer(_config(), data).run_epoch()


def test_fit_trains_up_to_a_total_and_reports_each_epoch() -> None:
    trainer = Trainer(_config(epochs=4), _tiny_dataset())
    seen: list[int] = []
    trainer.fit(epochs=2, on_epoch=lambda m: seen.append(m[EPOCH]))
    # `epochs` is a total, not a count to add: a second fit continues to the config's 4.
    trainer.fit(on_epoch=lambda m: seen.append(m[EPOCH]))
    assert seen == [1, 2, 3, 4]
    assert trainer.fit() == trainer.history and len(trainer.history) == 4


def test_trainer_huge_lr_raises_training_diverged() -> None:
    # lr 1e6 with AdamW's decoupled weight decay 0.01 multiplies every weight by (1 - 1e4) per
    # step; without sigmoid and with N(0, 1) init nothing bounds the output, so it overflows.
    trainer = Trainer(_config(lr=1e6, sigmoid=False, init=False), _tiny_dataset())
    with pytest.raises(TrainingDiverged) as info:
        trainer.fit()
    # The message names the epoch and the settings to change.
    message = str(info.value)
    assert "epoch" in message and "lr=1000000.0" in message and "diverges" in message
    # It is an MFError, so the CLI prints it as a message.
    assert isinstance(info.value, MFError)


def test_trainer_checkpoint_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    data = _tiny_dataset()
    straight = Trainer(_config(), data).fit(epochs=5)

    first = Trainer(_config(), data)
    first.fit(epochs=3)
    path = first.save_checkpoint(tmp_path / "ckpt" / "model.pt")
    resumed = Trainer.from_checkpoint(path, data)
    # The epoch count and history come back with the weights ...
    assert resumed.epoch == 3
    assert _without_time(resumed.history) == _without_time(first.history)
    resumed.fit(epochs=5)
    # ... and with the optimiser state and batch-order RNG, the next 2 epochs are the same as if
    # training had never stopped.
    assert [m[EPOCH] for m in resumed.history] == [1, 2, 3, 4, 5]
    for got, want in zip(_without_time(resumed.history), _without_time(straight), strict=True):
        assert got == pytest.approx(want, rel=1e-6)


def test_epochs_of_epoch_ratings_walk_through_whole_passes() -> None:
    # 260 training ratings: four epochs of 130 are the same two shuffled passes, in the same
    # batches, as two whole-pass epochs (dense AdamW, so nothing is owed between epochs).
    data = _tiny_dataset()
    assert len(data.train) == 260
    whole = Trainer(_config(optimizer="adamw", batch_size=26), data)
    halves = Trainer(_config(optimizer="adamw", batch_size=26, epoch_ratings=130), data)
    whole.fit(epochs=2)
    halves.fit(epochs=4)
    assert [m[EPOCH] for m in halves.history] == [1, 2, 3, 4]
    for name, want in whole.model.state_dict().items():
        torch.testing.assert_close(halves.model.state_dict()[name], want)


def test_a_run_resumed_part_way_through_a_pass_goes_on_as_if_never_stopped(tmp_path: Path) -> None:
    data = _tiny_dataset()
    cfg = _config(epoch_ratings=70)  # epochs end part way through a pass, and straddle two
    straight = Trainer(cfg, data).fit(epochs=7)
    first = Trainer(cfg, data)
    first.fit(epochs=3)
    resumed = Trainer.from_checkpoint(first.save_checkpoint(tmp_path / "model.pt"), data)
    resumed.fit(epochs=7)
    for got, want in zip(_without_time(resumed.history), _without_time(straight), strict=True):
        assert got == pytest.approx(want, rel=1e-6)


def test_checkpoint_keeps_the_config(tmp_path: Path) -> None:
    cfg = _config(emb_dim=6, l2=0.01, seed=4)
    path = Trainer(cfg, _tiny_dataset()).save_checkpoint(tmp_path / "model.pt")
    # A checkpoint rebuilds its own trainer: the config travels inside it.
    assert Trainer.from_checkpoint(path, _tiny_dataset()).config == cfg
    assert read_checkpoint(path)["config"] == cfg.to_dict()


def test_load_model_gives_the_trainers_predictions(tmp_path: Path) -> None:
    data = _tiny_dataset()
    trainer = Trainer(_config(epochs=2), data)
    trainer.fit()
    path = trainer.save_checkpoint(tmp_path / "model.pt")
    model, state = load_model(path)
    # For serving: same predictions, in eval mode, with the raw id maps beside it.
    users, items = torch.tensor(data.val.users), torch.tensor(data.val.items)
    assert torch.equal(model(users, items), trainer.model(users, items))
    assert not model.training
    assert state["user_ids"].tolist() == data.user_ids.tolist()
    assert state["item_ids"].tolist() == data.item_ids.tolist()


def test_from_checkpoint_with_other_ids_raises_mf_error_naming_both(tmp_path: Path) -> None:
    path = Trainer(_config(), _tiny_dataset()).save_checkpoint(tmp_path / "model.pt")
    other = _tiny_dataset(first_user_id=500, source="other-ratings.csv")
    # Same sizes but other raw ids: the rows mean other users, so loading must refuse.
    with pytest.raises(MFError) as info:
        Trainer.from_checkpoint(path, other)
    message = str(info.value)
    # The message names the data it was given and both sizes, and says how to fix it.
    assert "other-ratings.csv" in message
    assert f"{N_USERS} users / {N_ITEMS} items" in message
    assert "use the same data set" in message


def test_from_checkpoint_with_other_ids_names_the_checkpoint_file(tmp_path: Path) -> None:
    path = Trainer(_config(), _tiny_dataset()).save_checkpoint(tmp_path / "model.pt")
    # With several runs on disk, the user needs to know which checkpoint did not fit.
    with pytest.raises(MFError, match=str(path)):
        Trainer.from_checkpoint(path, _tiny_dataset(first_user_id=500))


def test_a_checkpoint_loads_only_into_a_trainer_of_its_model_and_optimiser(tmp_path: Path) -> None:
    state = Trainer(_config(emb_dim=4), _tiny_dataset()).state()
    # A trainer of another width (or squashing) would read the weights as another model.
    with pytest.raises(MFError, match=r"my\.pt: was trained with emb_dim 4, this run has emb_dim 8"):
        Trainer(_config(emb_dim=8), _tiny_dataset()).load_state(state, source="my.pt")
    with pytest.raises(MFError, match=r"sigmoid_high 5\.5, this run has sigmoid_high 5\.0"):
        Trainer(_config(emb_dim=4, sigmoid_high=5.0), _tiny_dataset()).load_state(state)
    # What only decides how it goes on training (the learning rate here) may differ.
    Trainer(_config(emb_dim=4, lr=0.001), _tiny_dataset()).load_state(state)


def test_read_checkpoint_missing_file_raises_mf_error(tmp_path: Path) -> None:
    with pytest.raises(MFError, match=r"nope\.pt: no checkpoint there"):
        Trainer.from_checkpoint(tmp_path / "nope.pt", _tiny_dataset())


def test_read_checkpoint_corrupt_file_raises_mf_error(tmp_path: Path) -> None:
    path = Trainer(_config(), _tiny_dataset()).save_checkpoint(tmp_path / "model.pt")
    path.write_bytes(path.read_bytes()[:100])  # a write cut short
    # Whatever torch raises inside becomes one MFError naming the file.
    with pytest.raises(MFError, match=r"model\.pt: not a readable mf-tune checkpoint"):
        load_model(path)


def test_read_checkpoint_other_torch_file_raises_mf_error(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, path)
    # A valid torch file that is not ours is refused by its missing format tag.
    with pytest.raises(MFError, match=r"weights\.pt: not an mf-tune checkpoint"):
        read_checkpoint(path)


def test_evaluate_gives_all_metrics_on_val_and_test() -> None:
    trainer = Trainer(_config(), _tiny_dataset(test=True))
    trainer.fit()
    for part in ("val", "test"):
        m = trainer.evaluate(part)
        # Regression and half-star classification metrics, on that part.
        assert set(m) == {"mse", "rmse", "mae", "f1", "precision", "recall"}
    # On val, the MSE is the one the last epoch reported.
    assert trainer.evaluate("val")["mse"] == pytest.approx(trainer.history[-1][VAL_MSE])


def test_evaluate_test_without_a_test_part_raises_mf_error() -> None:
    trainer = Trainer(_config(), _tiny_dataset(test=False))
    # The message says how to get a test part.
    with pytest.raises(MFError, match=r"no 'test' part .*test_n / test_fraction / test_data"):
        trainer.evaluate("test")


def test_sparse_adam_trains() -> None:
    trainer = Trainer(_config(optimizer="sparse_adam", weight_decay=0.0, epochs=10), _tiny_dataset())
    # SparseAdam for the tables and Adam for the dense offset.
    assert [type(o).__name__ for o in trainer.optimizers] == ["SparseAdam", "Adam"]
    history = trainer.fit()
    # It learns as the dense optimiser does.
    assert history[-1][TRAIN_LOSS] < 0.25 * history[0][TRAIN_LOSS]
    assert history[-1][VAL_MSE] < history[0][VAL_MSE]


def test_sparse_adam_without_bias_has_no_dense_optimizer() -> None:
    cfg = _config(optimizer="sparse_adam", weight_decay=0.0, bias=False)
    trainer = Trainer(cfg, _tiny_dataset())
    # No offset parameter, so SparseAdam alone.
    assert [type(o).__name__ for o in trainer.optimizers] == ["SparseAdam"]
    assert math.isfinite(trainer.run_epoch()[TRAIN_LOSS])


def test_l2_penalty_shrinks_the_factors() -> None:
    data = _tiny_dataset()
    plain = Trainer(_config(epochs=10, weight_decay=0.0), data)
    plain.fit()
    penalised = Trainer(_config(epochs=10, weight_decay=0.0, l2=0.5), data)
    penalised.fit()

    def norm(t: Trainer) -> float:
        return float(t.model.user_emb.weight.detach().norm() + t.model.item_emb.weight.detach().norm())

    # Same seed and data; only the L2 term differs, and it pulls the factors toward zero.
    assert norm(penalised) < norm(plain)


def test_trainer_default_optimizer_is_lazy_adamw() -> None:
    trainer = Trainer(_config(), _tiny_dataset())
    # The default steps only the rows of each batch, through its own table.
    assert [type(o).__name__ for o in trainer.optimizers] == ["LazyAdamW"]
    assert trainer.lazy is trainer.optimizers[0]


@pytest.mark.parametrize(("bias", "sigmoid"), [(True, True), (False, True), (True, False)])
def test_lazy_adamw_trains_like_dense_adamw_when_every_batch_touches_every_row(
    bias: bool, sigmoid: bool
) -> None:
    data = _tiny_dataset()
    # One batch of all 260 training ratings: every user and every item at every step.
    cfg = _config(batch_size=4096, epochs=25, weight_decay=0.2, l2=0.05, bias=bias, sigmoid=sigmoid)
    lazy = Trainer(cfg.replace(optimizer="lazy_adamw"), data)
    dense = Trainer(cfg.replace(optimizer="adamw"), data)
    lazy_history, dense_history = lazy.fit(), dense.fit()
    # Gradients by hand and the row-sparse step give dense AdamW's weights, to float rounding ...
    got, want = lazy.model.state_dict(), dense.model.state_dict()
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=2e-6)
    # ... and the same losses epoch by epoch.
    for a, b in zip(_without_time(lazy_history), _without_time(dense_history), strict=True):
        assert a == pytest.approx(b, rel=1e-5)


def test_lazy_adamw_checkpoint_resumes_exactly_and_saves_plain_weights(tmp_path: Path) -> None:
    data = _tiny_dataset()
    cfg = _config(optimizer="lazy_adamw", weight_decay=0.3, l2=0.05)
    straight = Trainer(cfg, data).fit(epochs=5)
    first = Trainer(cfg, data)
    first.fit(epochs=2)
    path = first.save_checkpoint(tmp_path / "model.pt")
    resumed = Trainer.from_checkpoint(path, data)
    resumed.fit(epochs=5)
    # Moments, owed decay and step count come back: the same epochs, bit for bit.
    assert _without_time(resumed.history) == _without_time(straight)
    # The saved model is the tutorial's layout, with contiguous tables of their own size (no
    # optimiser table behind them), so load_model and mf.recommend read it as any other.
    weights = read_checkpoint(path)["model"]
    assert weights["user_emb.weight"].shape == (N_USERS, 4) and weights["user_emb.weight"].is_contiguous()
    assert weights["user_bias.weight"].untyped_storage().nbytes() == N_USERS * 4


def test_trainer_uses_read_only_arrays_without_a_copy_or_a_warning(recwarn: pytest.WarningsRecorder) -> None:
    def read_only(part: Interactions) -> Interactions:
        # The Dataset's dtypes (int32 ids, float32 ratings), read-only as Ray's object store gives them.
        arrays = [np.array(part.users, np.int32), np.array(part.items, np.int32), np.array(part.ratings)]
        for array in arrays:
            array.setflags(write=False)
        return Interactions(*arrays)

    tiny = _tiny_dataset()
    data = dataclasses.replace(tiny, train=read_only(tiny.train), val=read_only(tiny.val))
    trainer = Trainer(_config(), data)
    trainer.run_epoch()
    # On CPU the training tensors are the Dataset's own arrays (int32 ids, float32 ratings) ...
    assert trainer.train_part.users.data_ptr() == data.train.users.ctypes.data
    assert trainer.train_part.ratings.data_ptr() == data.train.ratings.ctypes.data
    # ... and torch's warning about non-writable arrays is not raised (they are never written).
    assert not [w for w in recwarn if "not writable" in str(w.message)]


def test_schedules_move_the_lr_from_its_start_to_its_end() -> None:
    cfg = _config(lr=0.01, lr_floor=0.1)
    at = {name: [lr_at(cfg.replace(lr_schedule=name), t) for t in (0.0, 0.25, 0.5, 1.0, 2.0)] for name in
          ("constant", "cosine", "linear", "one-cycle")}  # fmt: skip
    assert at["constant"] == [0.01] * 5
    # cosine and linear fall from lr to lr * lr_floor (0.001), and stay there past the end.
    assert at["cosine"] == pytest.approx([0.01, 0.001 + 0.009 * 0.853553, 0.0055, 0.001, 0.001], rel=1e-5)
    assert at["linear"] == pytest.approx([0.01, 0.00775, 0.0055, 0.001, 0.001])
    # one-cycle (fastai's defaults): from lr / 25 up to lr at a quarter, then down to lr / 2.5e6.
    assert at["one-cycle"][0] == pytest.approx(0.0004) and at["one-cycle"][1] == pytest.approx(0.01)
    assert at["one-cycle"][3] == pytest.approx(4e-9) and at["one-cycle"][4] == at["one-cycle"][3]


def test_a_schedule_moves_in_pieces_of_whole_batches() -> None:
    data = _tiny_dataset()  # 260 training ratings
    cfg = _config(batch_size=16, epochs=3, schedule_epochs=50, lr_schedule="one-cycle")
    trainer = Trainer(cfg, data)
    # 100 pieces over 50 epochs: 2 an epoch, of 130 ratings rounded up to whole batches of 16 (144),
    # and the rest (116), each at the lr of its middle.
    pieces = trainer._pieces(260)
    assert [n for n, _ in pieces] == [144, 116]
    assert pieces[0][1] == pytest.approx(lr_at(cfg, (72 / 260) / 50))
    assert pieces[1][1] == pytest.approx(lr_at(cfg, ((144 + 58) / 260) / 50))
    # The second epoch's pieces sit one epoch further along; a constant lr is one piece.
    trainer.run_epoch()
    assert trainer._pieces(260)[0][1] == pytest.approx(lr_at(cfg, (1 + 72 / 260) / 50))
    assert Trainer(cfg.replace(lr_schedule="constant"), data)._pieces(260) == [(260, cfg.lr)]


def test_lazy_adamw_follows_dense_adamw_through_a_schedule_when_every_step_touches_every_row() -> None:
    data = _tiny_dataset()
    # One batch an epoch touches every row: the lazy optimiser owes nothing, and settles at each lr.
    cfg = _config(
        batch_size=4096, epochs=6, schedule_epochs=8, lr_schedule="cosine", weight_decay=0.2, l2=0.05
    )
    lazy = Trainer(cfg.replace(optimizer="lazy_adamw"), data)
    dense = Trainer(cfg.replace(optimizer="adamw"), data)
    lazy.fit(), dense.fit()
    got, want = lazy.model.state_dict(), dense.model.state_dict()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=2e-6)
    # And the schedule matters: the constant lr ends elsewhere.
    constant = Trainer(cfg.replace(lr_schedule="constant"), data)
    constant.fit()
    assert not torch.allclose(constant.model.state_dict()["user_emb.weight"], got["user_emb.weight"])


def test_epoch_decay_sets_the_weight_decay_that_decays_that_much_an_epoch() -> None:
    data = _tiny_dataset()  # 260 training ratings
    cfg = _config(epoch_decay=0.26, batch_size=10, lr=0.01, weight_decay=0.5, optimizer="adamw")
    (opt,) = Trainer(cfg, data).optimizers
    # 26 steps an epoch at lr 0.01: a weight decay of 1.0 decays by 0.26 an epoch (weight_decay is ignored).
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(1.0)
    # With epoch_ratings the epoch is that many ratings.
    (opt,) = Trainer(cfg.replace(epoch_ratings=130), data).optimizers
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(2.0)


def test_a_checkpoint_resumes_a_cosine_schedule_where_it_was(tmp_path: Path) -> None:
    data = _tiny_dataset()
    cfg = _config(lr_schedule="cosine", epochs=5)
    straight = Trainer(cfg, data).fit()
    first = Trainer(cfg, data)
    first.fit(epochs=2)
    resumed = Trainer.from_checkpoint(first.save_checkpoint(tmp_path / "model.pt"), data)
    resumed.fit()
    assert _without_time(resumed.history) == _without_time(straight)


def _weights_after_each_epoch(cfg: TrainConfig, data: Dataset) -> list[dict[str, torch.Tensor]]:
    trainer, seen = Trainer(cfg, data), []
    trainer.fit(on_epoch=lambda m: seen.append({k: v.clone() for k, v in trainer.model.state_dict().items()}))
    return seen


@pytest.mark.parametrize("optimizer", ["lazy_adamw", "adamw"])
def test_swa_start_scores_with_the_mean_of_the_weights_since_that_epoch(optimizer: str) -> None:
    data = _tiny_dataset()
    cfg = _config(epochs=5, optimizer=optimizer, weight_decay=0.1)
    # Averaging changes what is scored, not how the weights train.
    raw = _weights_after_each_epoch(cfg, data)
    averaged = Trainer(cfg.replace(swa_start=3), data)
    plain = Trainer(cfg, data)
    for epoch in range(1, 6):
        got, want = averaged.run_epoch(), plain.run_epoch()
        assert got[TRAIN_LOSS] == want[TRAIN_LOSS]
        if epoch < 3:  # before swa_start the trained weights are scored
            assert got[VAL_MSE] == want[VAL_MSE]
            assert averaged.scoring_model is averaged.model
    # From epoch 3 on: the mean of the weights at the ends of epochs 3, 4 and 5.
    mean = {k: sum(w[k] for w in raw[2:]) / 3 for k in raw[0]}
    for name, tensor in averaged.scoring_model.state_dict().items():
        torch.testing.assert_close(tensor, mean[name])
    users, items = torch.tensor(data.val.users), torch.tensor(data.val.items)
    with torch.no_grad():
        mse = float(((averaged.scoring_model(users, items) - torch.tensor(data.val.ratings)) ** 2).mean())
    assert averaged.history[-1][VAL_MSE] == pytest.approx(mse, rel=1e-5)
    assert averaged.history[-1][VAL_MSE] != plain.history[-1][VAL_MSE]


def test_an_averaging_run_resumes_its_running_mean_from_a_checkpoint(tmp_path: Path) -> None:
    data = _tiny_dataset()
    cfg = _config(epochs=6, swa_start=2)
    straight = Trainer(cfg, data).fit()
    first = Trainer(cfg, data)
    first.fit(epochs=4)  # three epochs in the mean
    resumed = Trainer.from_checkpoint(first.save_checkpoint(tmp_path / "model.pt"), data)
    resumed.fit()
    for got, want in zip(_without_time(resumed.history), _without_time(straight), strict=True):
        assert got == pytest.approx(want, rel=1e-6)


def test_an_averaging_runs_best_export_and_served_model_are_the_running_mean(tmp_path: Path) -> None:
    data = _tiny_dataset()
    trainer = Trainer(_config(epochs=4, swa_start=2), data)
    trainer.fit()
    users, items = torch.tensor(data.val.users), torch.tensor(data.val.items)
    averaged = trainer.scoring_model(users, items).detach()
    assert not torch.equal(averaged, trainer.model(users, items))
    # load_model (mf.recommend, mf.serve) serves what the trainer scored with ...
    served, _ = load_model(trainer.save_checkpoint(tmp_path / "model.pt"))
    assert torch.equal(served(users, items), averaged)
    # ... and rewinding to the best epoch puts that epoch's mean into the model itself.
    best = trainer.best
    trainer.rewind_to_best()
    assert trainer.scoring_model is trainer.model
    assert trainer.evaluate("val")["mse"] == pytest.approx(best.val_mse, rel=1e-6)


def test_retraining_an_averaging_run_to_its_best_epoch_repeats_its_best_val_mse() -> None:
    # What `mf.train --config best/config.yaml` does with an export: the config's epochs are the best epoch.
    data = _tiny_dataset()
    cfg = _config(epochs=8, swa_start=3, lr=0.1)
    search = Trainer(cfg, data)
    search.fit()
    assert search.best.epoch > cfg.swa_start  # the best is a mean of several epochs
    retrain = Trainer(cfg.replace(epochs=search.best.epoch), data)
    retrain.fit()
    assert retrain.evaluate("val")["mse"] == pytest.approx(search.best.val_mse, rel=1e-6)


@pytest.mark.parametrize("bias, sigmoid", [(True, True), (False, False)])
def test_an_ensemble_predicts_its_members_mean_logit(tmp_path: Path, bias: bool, sigmoid: bool) -> None:
    data = _tiny_dataset()
    config = _config(bias=bias, sigmoid=sigmoid, sigmoid_high=5.0)
    ensemble = Trainer(config.replace(ensemble=3), data)
    ensemble.fit()
    # Its members are the same configuration trained alone with the seeds 0, 1000 and 2000.
    members = [Trainer(config.replace(seed=seed), data) for seed in (0, 1000, 2000)]
    for member in members:
        member.fit()
    predictions = np.stack([m.predict_part(m.val_part).astype(np.float64) for m in members])
    if sigmoid:  # back to the logit, averaged, and through the sigmoid again
        logits = np.log(predictions / (5.0 - predictions))
        expected = 5.0 / (1.0 + np.exp(-logits.mean(axis=0)))
    else:
        expected = predictions.mean(axis=0)
    assert np.allclose(ensemble.predict_part(ensemble.val_part), expected, atol=1e-5)
    # It is one MFAdvanced, three times as wide, that serves and retrains like any other model.
    ensemble.save_checkpoint(tmp_path / "model.pt")
    model, _ = load_model(tmp_path / "model.pt")
    assert model.user_emb.embedding_dim == 3 * config.emb_dim
    users, items = ensemble.val_part.users, ensemble.val_part.items
    assert np.allclose(model(users, items).detach().numpy(), expected, atol=1e-5)
    # Its history is the members' mean at each epoch.
    assert [m[EPOCH] for m in ensemble.history] == [1, 2, 3, 4, 5]
    assert ensemble.history[-1][TRAIN_LOSS] == pytest.approx(
        np.mean([m.history[-1][TRAIN_LOSS] for m in members])
    )


def test_an_ensemble_is_trained_whole_by_fit_not_epoch_by_epoch() -> None:
    trainer = Trainer(_config(ensemble=2), _tiny_dataset())
    with pytest.raises(MFError, match="ensemble: 2 models are trained whole by fit"):
        trainer.run_epoch()
    trainer.fit()
    with pytest.raises(MFError, match="already trained"):
        trainer.fit(epochs=6)
