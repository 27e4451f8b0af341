"""The Optuna searcher on its own: what Optuna is told for each way a trial can end."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from ray.tune.search import Searcher

from search_spaces import load_space
from tune.searcher import DIVERGED, RAY_TRIAL_ID, TruthfulOptunaSearch


def make_searcher(tmp_path: Path, max_epochs: int = 4, num_samples: int = -1) -> TruthfulOptunaSearch:
    return TruthfulOptunaSearch(
        space=load_space("default").to_optuna(),
        sampler=optuna.samplers.TPESampler(seed=0),
        storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}"),
        study_name="s",
        metric="val_mse",
        mode="min",
        max_epochs=max_epochs,
        num_samples=num_samples,
    )


def run(searcher: TruthfulOptunaSearch, trial_id: str, curve: list[float], **complete) -> None:
    searcher.suggest(trial_id)
    for epoch, mse in enumerate(curve[:-1], start=1):
        searcher.on_trial_result(trial_id, {"epoch": epoch, "val_mse": mse})
    # Tune passes the result that ends a trial to on_trial_complete only.
    searcher.on_trial_complete(trial_id, result={"epoch": len(curve), "val_mse": curve[-1], **complete})


def study_trial(searcher: TruthfulOptunaSearch, trial_id: str) -> optuna.trial.FrozenTrial:
    return next(t for t in searcher.study.trials if t.user_attrs[RAY_TRIAL_ID] == trial_id)


def test_finished_trial_is_complete_with_its_best_epoch(tmp_path: Path):
    searcher = make_searcher(tmp_path)
    run(searcher, "a", [1.2, 0.9, 0.85, 0.88])
    t = study_trial(searcher, "a")
    # Ran all 4 epochs: COMPLETE, valued at its best epoch (0.85), every epoch an intermediate value.
    assert t.state == TrialState.COMPLETE
    assert t.value == pytest.approx(0.85)
    assert t.intermediate_values == {1: 1.2, 2: 0.9, 3: 0.85, 4: 0.88}


def test_stopped_trial_is_pruned_with_its_curve(tmp_path: Path):
    searcher = make_searcher(tmp_path)
    run(searcher, "b", [1.3, 1.1])
    t = study_trial(searcher, "b")
    # Stopped at epoch 2 of 4 (by ASHA): PRUNED, the stopping result included.
    assert t.state == TrialState.PRUNED
    assert t.intermediate_values == {1: 1.3, 2: 1.1}


def test_diverged_and_crashed_trials_fail(tmp_path: Path):
    searcher = make_searcher(tmp_path)
    run(searcher, "nan", [1.3, float("inf")], **{DIVERGED: 1})
    searcher.suggest("crash")
    searcher.on_trial_result("crash", {"epoch": 1, "val_mse": 1.0})
    searcher.on_trial_complete("crash", error=True)
    # Divergence and errors are FAIL; the non-finite value never reaches Optuna.
    assert study_trial(searcher, "nan").state == TrialState.FAIL
    assert study_trial(searcher, "nan").intermediate_values == {1: 1.3}
    assert study_trial(searcher, "crash").state == TrialState.FAIL


def test_retried_trial_reports_each_epoch_once(tmp_path: Path):
    searcher = make_searcher(tmp_path)
    searcher.suggest("r")
    for epoch in (1, 2, 3, 2, 3):  # crashed after epoch 3, retried from the epoch-1 checkpoint
        searcher.on_trial_result("r", {"epoch": epoch, "val_mse": 1.0 / epoch})
    searcher.on_trial_complete("r", result={"epoch": 4, "val_mse": 0.2})
    t = study_trial(searcher, "r")
    assert sorted(t.intermediate_values) == [1, 2, 3, 4]
    assert t.state == TrialState.COMPLETE


def test_restore_runs_a_proposal_the_dead_driver_never_saved(tmp_path: Path):
    searcher = make_searcher(tmp_path)
    searcher.suggest("saved")
    searcher.save(str(tmp_path / "searcher.pkl"))  # Tune's last snapshot before the kill
    lost_params = searcher.suggest("lost")  # asked after it: in the study, unknown to the snapshot
    searcher.on_trial_result("lost", {"epoch": 1, "val_mse": 1.1})

    restored = make_searcher(tmp_path)
    restored.restore(str(tmp_path / "searcher.pkl"))
    # The next trial Tune asks for runs the orphaned proposal instead of a new one...
    assert restored.suggest("new") == lost_params
    restored.on_trial_result("new", {"epoch": 1, "val_mse": 1.1})
    restored.on_trial_complete("new", result={"epoch": 2, "val_mse": 1.0})
    restored.on_trial_complete("saved", result={"epoch": 4, "val_mse": 0.9})
    # ...so the study has one trial per Tune trial and none left RUNNING.
    states = {t.user_attrs[RAY_TRIAL_ID]: t.state for t in restored.study.trials}
    assert states == {"saved": TrialState.COMPLETE, "new": TrialState.PRUNED}


def test_restore_counts_trials_that_ended_after_the_save_against_num_samples(tmp_path: Path):
    searcher = make_searcher(tmp_path, num_samples=3)
    searcher.suggest("a")
    searcher.save(str(tmp_path / "searcher.pkl"))
    run(searcher, "b", [1.2, 1.1])  # asked and stopped after the save, then the driver died

    restored = make_searcher(tmp_path, num_samples=3)
    restored.restore(str(tmp_path / "searcher.pkl"))
    # Tune's equally old snapshot knows only "a", so it asks for two more; the study has room for one.
    assert restored.suggest("c") is not None
    assert restored.suggest("d") == Searcher.FINISHED
    assert len(restored.study.trials) == 3
