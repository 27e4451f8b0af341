"""Pruning fidelity: how well ASHA's rungs rank the trials that ran to the end."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tune.record.results import TrialRecord
from tune.report.fidelity import pruning_fidelity
from tune.settings import ExperimentSettings


def trial(trial_id: str, curve: dict[int, float], *, own_epochs: int = 9) -> TrialRecord:
    """A trial's record: COMPLETE when its curve reaches its own length (max_epochs, 9, unless the
    space tuned it), else PRUNED, as ASHA would have left it."""
    history = pd.DataFrame({"epoch": list(curve), "val_mse": list(curve.values())})
    return TrialRecord(
        trial_id=trial_id,
        outcome="COMPLETE" if max(curve) >= own_epochs else "PRUNED",
        epochs=max(curve),
        best_val_mse=min(curve.values()),
        best_epoch=min(curve, key=curve.get),
        last_val_mse=curve[max(curve)],
        node_id="n",
        retries=0,
        history=history,
    )


SETTINGS = ExperimentSettings(max_epochs=9, grace_period=1, reduction_factor=3)  # rungs 1, 3


def test_a_first_rung_that_ranks_like_the_end_has_rho_one_and_stops_none_of_the_top():
    # Curves that never cross: the order at every epoch is the final order.
    records = [trial(f"t{i}", {e: 1.0 + 0.1 * i + 1.0 / e for e in range(1, 10)}) for i in range(12)]
    f = pruning_fidelity(records, SETTINGS)
    assert [r.epoch for r in f.rungs] == [1, 3]
    assert [r.spearman for r in f.rungs] == pytest.approx([1.0, 1.0])
    assert f.finished == 12 and f.top == 10
    # The first rung keeps the best third (4 of 12): 6 of the final top 10 fall outside it, because
    # so few trials ran; the ranking itself is right, so there is nothing to warn about.
    assert f.top_stopped_at_first_rung == 6
    assert f.warning(SETTINGS) is None


def test_crossing_curves_give_a_negative_rho_and_a_warning_that_says_what_to_change():
    # Those fast at epoch 1 end worst (a high learning rate that overfits, say).
    rng = np.random.default_rng(0)
    records = []
    for i in range(10):
        start, end = 1.0 + 0.05 * i, 0.9 - 0.01 * i
        records.append(
            trial(f"t{i}", {e: end + (start - end) / e + rng.normal(0, 1e-4) for e in range(1, 10)})
        )
    f = pruning_fidelity(records, SETTINGS)
    assert f.rungs[0].spearman < -0.9
    warning = f.warning(SETTINGS)
    assert "epoch 1" in warning and "--grace-period 3" in warning and "--brackets 2" in warning


def test_too_few_finished_trials_are_not_judged():
    records = [trial("a", {1: 1.0, 2: 0.9}), trial("b", {e: 1.0 / e for e in range(1, 10)})]
    f = pruning_fidelity(records, SETTINGS)
    assert f.finished == 1
    assert "too few" in f.lines()[0]
    assert f.warning(SETTINGS) is None


def test_a_trial_that_ran_its_own_shorter_length_counts_as_finished():
    # The space tuned its epochs to 5: it ended there, COMPLETE, and is judged with the others.
    records = [trial(f"t{i}", {e: 1.0 / e + 0.01 * i for e in range(1, 10)}) for i in range(3)]
    records.append(trial("short", {e: 1.0 / e for e in range(1, 6)}, own_epochs=5))
    f = pruning_fidelity(records, SETTINGS)
    assert f.finished == 4
    assert f.rungs[0].trials == 4
