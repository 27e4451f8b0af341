"""When a trial may train its next epoch before the driver has handled its last report."""

from __future__ import annotations

from pathlib import Path

import pytest

from tune.scheduler import PersistentASHA
from tune.settings import ExperimentSettings
from tune.trainable import RunAhead


@pytest.mark.parametrize(
    ("max_epochs", "grace_period", "reduction_factor"),
    [(30, 2, 3), (18, 2, 3), (4, 1, 2), (27, 1, 3), (100, 4, 4), (5, 5, 2), (10, 3, 2)],
)
def test_decision_epochs_are_where_asha_may_stop_a_trial(
    tmp_path: Path, max_epochs: int, grace_period: int, reduction_factor: int
):
    settings = ExperimentSettings(
        max_epochs=max_epochs, grace_period=grace_period, reduction_factor=reduction_factor
    )
    asha = PersistentASHA(
        state_path=tmp_path / "asha.json",
        time_attr="epoch",
        metric="val_mse",
        mode="min",
        max_t=max_epochs,
        grace_period=grace_period,
        reduction_factor=reduction_factor,
    )
    # ASHA compares trials at its rungs and stops every trial at max_t; after any other epoch it
    # says CONTINUE, which is what lets a trial train the next epoch early.
    assert settings.decision_epochs == frozenset(asha.rungs) | {max_epochs}


def test_run_ahead_waits_after_a_decision_epoch_and_after_a_slow_epoch():
    run_ahead = RunAhead(decision_epochs=frozenset({2, 6, 18, 30}), max_epoch_s=1.0)
    assert run_ahead.allowed(1, 0.02)
    assert run_ahead.allowed(5, 0.02)
    # ASHA may stop the trial after epoch 2: its next epoch waits for that decision.
    assert not run_ahead.allowed(2, 0.02)
    assert not run_ahead.allowed(30, 0.02)
    # A slow epoch gains nothing from running ahead, and would hold up a stop by the time budget.
    assert not run_ahead.allowed(5, 1.5)
