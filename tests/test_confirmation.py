"""Confirming the winner: the candidates, the epoch and the mean over fresh seeds, from files."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from tune.export.best import refit_deadline
from tune.export.confirmation import (
    Candidate,
    affordable,
    candidates,
    confirm,
    confirmation_seeds,
    read_run,
    read_summary,
    save_run,
    write_summary,
)
from tune.record.results import TrialRecord
from tune.settings import ExperimentSettings, refit_grace_s


def record(trial_id: str, best: float, outcome: str = "COMPLETE", **params) -> TrialRecord:
    return TrialRecord(
        trial_id=trial_id,
        outcome=outcome,
        epochs=4,
        best_val_mse=best,
        best_epoch=3,
        last_val_mse=best,
        node_id="n",
        retries=0,
        params=params or {"lr": best},
        history=pd.DataFrame(),
    )


def test_candidates_are_the_best_distinct_configurations():
    records = [
        record("a", 0.90, lr=0.01),
        record("b", 0.85, lr=0.02),
        record("c", 0.86, lr=0.02),  # the same configuration as b: one candidate is enough
        record("d", 0.80, outcome="FAIL", lr=0.03),  # failed trials are never candidates
        record("e", math.nan, lr=0.04),
        record("f", 0.88, lr=0.05),
    ]
    # Best first, one per configuration, no failed or unscored trial.
    assert [c.trial_id for c in candidates(records, 3)] == ["b", "f", "a"]
    assert [c.trial_id for c in candidates(records, 10)] == ["b", "f", "a"]


def test_confirmation_seeds_are_not_the_searchs():
    assert confirmation_seeds(0, 3) == [1, 2, 3]
    assert 7 not in confirmation_seeds(7, 5)


def test_the_confirmed_epoch_is_where_the_mean_over_seeds_is_lowest():
    candidate = Candidate("a", {"lr": 0.01}, search_best=0.80)
    curves = {
        1: {1: 1.0, 2: 0.90, 3: 0.86, 4: 0.87},
        2: {1: 1.1, 2: 0.88, 3: 0.88, 4: 0.85},  # this seed alone is best at epoch 4...
        3: {1: 1.0, 2: 0.89, 3: 0.84, 4: 0.89},
    }
    c = confirm(candidate, curves)
    # ...but the mean over the three is lowest at epoch 3: (0.86 + 0.88 + 0.84) / 3.
    assert c.epoch == 3
    assert c.mean == pytest.approx(0.86)
    assert c.sd == pytest.approx(0.02)
    assert c.seeds == (1, 2, 3)


def test_an_epoch_a_seed_diverged_in_or_never_reached_is_not_chosen():
    candidate = Candidate("a", {}, search_best=0.8)
    curves = {1: {1: 1.0, 2: 0.9, 3: 0.5}, 2: {1: 1.0, 2: 0.9}}  # seed 2 diverged in epoch 3
    assert confirm(candidate, curves).epoch == 2
    assert confirm(candidate, {1: {}}) is None


def test_runs_and_summary_read_back_from_the_experiment_folder(tmp_path: Path):
    candidate = Candidate("a", {"lr": 0.01}, search_best=0.8)
    save_run(tmp_path, candidate, 1, {1: 0.9, 2: 0.85})
    # A resumed run finds the runs that finished before.
    assert read_run(tmp_path, "a", 1) == {1: 0.9, 2: 0.85}
    assert read_run(tmp_path, "a", 2) is None
    better = confirm(Candidate("b", {"lr": 0.02}, 0.81), {1: {1: 0.83}})
    worse = confirm(candidate, {1: {1: 0.9, 2: 0.85}})
    write_summary(tmp_path, [worse, better], planned=2, seconds=1.0)
    # Best mean first: the one the export takes.
    assert [c.trial_id for c in read_summary(tmp_path)] == ["b", "a"]
    assert read_summary(tmp_path / "elsewhere") == []


def test_a_confirmation_run_keeps_the_experiments_random_split(tmp_path: Path):
    from mf.config import TrainConfig
    from mf.training import dataset_for
    from tests.files import ml_latest_small
    from tune.export.confirmation import run_config

    base = TrainConfig(data=str(ml_latest_small()), split="random", val_fraction=0.1, seed=3)
    config = run_config(base, Candidate("a", {"lr": 0.01}, 0.9), seed=4, max_epochs=5)
    # A new seed for the init and the batch order, but the same validation ratings: the split's
    # seed is the experiment's, written into the config a retrain reads.
    assert (config.seed, config.split_seed, config.epochs, config.lr) == (4, 3, 5, 0.01)
    assert (dataset_for(config).val.ratings == dataset_for(base).val.ratings).all()
    assert (dataset_for(config).val.users == dataset_for(base).val.users).all()
    assert not (dataset_for(base.replace(seed=4)).val.users == dataset_for(base).val.users).all()


def test_only_as_many_candidates_as_the_time_left_affords_are_confirmed():
    # Runs of 10 s, 10 s, 40 s, 10 s (best candidate first), 3 seeds each, on 2 slots.
    costs = [10.0, 10.0, 40.0, 10.0]
    assert affordable(costs, seeds=3, slots=2, seconds=None) == 4  # no budget: all
    # The first two are 60 s of runs, 30 s on 2 slots; the third alone would add 60 s.
    assert affordable(costs, seeds=3, slots=2, seconds=31.0) == 2
    assert affordable(costs, seeds=3, slots=2, seconds=14.0) == 0
    assert affordable(costs, seeds=3, slots=2, seconds=1000.0) == 4


def test_the_refit_may_end_half_the_runs_tolerance_after_the_budget():
    # The run's tolerance is max(30 s, 5 % of the budget); the refit may take half of it.
    assert refit_grace_s(60) == 15.0
    assert refit_grace_s(600) == 15.0
    assert refit_grace_s(1200) == 30.0


def test_both_exports_refit_by_the_budgets_end_plus_that_grace():
    # A 1,200 s budget whose end is at t = 5,000: its refits may end until 5,030.
    assert refit_deadline(5000.0, ExperimentSettings(time_budget_s=1200)) == 5030.0
    assert refit_deadline(5000.0, ExperimentSettings()) == 5000.0  # no budget, no grace
    assert refit_deadline(None, ExperimentSettings(time_budget_s=1200)) is None
