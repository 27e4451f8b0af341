"""The compiled LazyAdamW step (mf.fused_step) trains what the torch path trains."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mf import fused_step
from mf.config import TrainConfig
from mf.metrics import EPOCH_SECONDS
from mf.training import Trainer, TrainingDiverged
from tests.files import tiny_dataset

pytestmark = pytest.mark.skipif(fused_step.numba is None, reason="numba is not installed")


def config(**changes: object) -> TrainConfig:
    base = TrainConfig(device="cpu", threads=1, emb_dim=4, batch_size=32, lr=0.05, epochs=6, l2=0.05)
    return base.replace(**{"weight_decay": 0.2, **changes})


def curves(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in m.items() if k != EPOCH_SECONDS} for m in history]


@pytest.mark.parametrize("idle", ["dense", "decay", "none"])
@pytest.mark.parametrize(
    ("bias", "sigmoid", "schedule"),
    [(True, True, "constant"), (False, True, "one-cycle"), (True, False, "cosine")],
)
def test_fused_step_trains_what_the_torch_path_trains(idle: str, bias: bool, sigmoid: bool, schedule: str):
    data = tiny_dataset()
    # Batches of 32 of 260 ratings: most rows are idle at most steps, so every idle rule matters; a
    # schedule spanning 20 epochs changes the lr 5 times an epoch, and each time the rows settle.
    cfg = config(bias=bias, sigmoid=sigmoid, lr_schedule=schedule, schedule_epochs=20)
    fused, torch_path = Trainer(cfg, data, fused=True), Trainer(cfg, data, fused=False)
    assert fused.fused is not None and torch_path.fused is None
    fused.lazy.idle = torch_path.lazy.idle = idle
    a, b = fused.fit(), torch_path.fit()
    for got, want in zip(curves(a), curves(b), strict=True):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6)
    for name, want in torch_path.model.state_dict().items():
        torch.testing.assert_close(fused.model.state_dict()[name], want, rtol=1e-3, atol=1e-5)


def test_idle_runs_past_the_tables_are_computed_as_the_tables_would_give():
    data = tiny_dataset()
    cfg = config(epochs=4)
    short, tables, torch_path = (Trainer(cfg, data, fused=f) for f in (True, True, False))
    short.fused.table_steps = 3  # nearly every idle run and every `last` lies past the tables
    a, b = short.fit(), torch_path.fit()
    for got, want in zip(curves(a), curves(b), strict=True):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6)
    tables.fit()  # the same formulas, so the same weights but for float rounding
    for name, want in tables.model.state_dict().items():
        torch.testing.assert_close(short.model.state_dict()[name], want, rtol=1e-5, atol=1e-7)


def test_prefetch_compiles_and_changes_nothing():
    # mf.prefetch emits LLVM's llvm.prefetch.p0 through numba; a numba whose LLVM names it
    # otherwise fails here.
    import numba
    import numpy as np

    from mf.prefetch import prefetch, prefetch_1d

    @numba.njit
    def total(table, column):
        s = 0.0
        for i in range(table.shape[0]):
            prefetch(table, min(i + 4, table.shape[0] - 1), 0)
            prefetch_1d(column, min(i + 4, table.shape[0] - 1))
            s += table[i].sum() + column[i]
        return s

    table = np.arange(40, dtype=np.float32).reshape(10, 4)
    column = np.arange(10, dtype=np.int32)
    assert total(table, column) == table.sum() + column.sum()
    assert table.tolist() == np.arange(40, dtype=np.float32).reshape(10, 4).tolist()
    assert column.tolist() == list(range(10))


@pytest.mark.parametrize("idle", ["dense", "decay", "none"])
def test_the_compiled_settle_brings_rows_up_to_date_as_lazy_adamw_settle_does(idle: str):
    trainer = Trainer(config(), tiny_dataset(), fused=True)
    trainer.lazy.idle = idle
    part = trainer.train_part
    for start in range(0, 96, 32):  # three steps and no settle: most rows owe something
        trainer.fused(
            part.users[start : start + 32], part.items[start : start + 32], part.ratings[start : start + 32]
        )
    table = trainer.lazy.table
    owed = table.clone()
    trainer.fused.settle()
    compiled = table.clone()
    table.copy_(owed)
    trainer.lazy.settle()
    assert not torch.equal(compiled, owed) or idle == "none"
    torch.testing.assert_close(compiled, table, rtol=1e-5, atol=1e-7)


def test_fused_step_is_dense_adamw_when_every_row_is_touched_every_step():
    data = tiny_dataset()
    cfg = config(batch_size=4096, epochs=20)
    fused, dense = Trainer(cfg, data, fused=True), Trainer(cfg.replace(optimizer="adamw"), data)
    fused.fit(), dense.fit()
    for name, want in dense.model.state_dict().items():
        torch.testing.assert_close(fused.model.state_dict()[name], want, rtol=1e-4, atol=2e-6)


def test_a_fused_run_resumes_from_its_checkpoint_exactly(tmp_path: Path):
    data = tiny_dataset()
    straight = Trainer(config(), data, fused=True).fit()
    first = Trainer(config(), data, fused=True)
    first.fit(epochs=3)
    resumed = Trainer.from_checkpoint(first.save_checkpoint(tmp_path / "model.pt"), data)
    assert resumed.fused is not None
    resumed.fit()
    assert curves(resumed.history) == curves(straight)


def test_a_rewound_trainer_steps_its_new_optimiser():
    trainer = Trainer(config(), tiny_dataset(), fused=True)
    trainer.fit(epochs=3)
    trainer.rewind_to_best()
    # The fused step now writes the new optimiser's table, which the model reads.
    assert trainer.fused.opt is trainer.lazy
    before = trainer.model.user_emb.weight.clone()
    trainer.run_epoch()
    assert not torch.equal(before, trainer.model.user_emb.weight)


def test_a_diverging_fused_run_still_raises():
    # The compiled step keeps NaN and infinity (no fast-math assumptions about them).
    trainer = Trainer(
        config(lr=1e12, sigmoid=False, init=False, weight_decay=0.0), tiny_dataset(), fused=True
    )
    with pytest.raises(TrainingDiverged, match="diverges"):
        trainer.fit(epochs=5)


def test_the_fused_step_is_used_only_where_it_applies():
    data = tiny_dataset()
    assert Trainer(config(), data).fused is not None  # the default on a CPU
    assert Trainer(config(optimizer="adamw"), data).fused is None  # the dense path is autograd's
    assert Trainer(config(), data, fused=False).fused is None
