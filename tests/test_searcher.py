"""The Optuna searcher on its own: what Optuna is told for each way a trial can end, and restarts."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from ray.tune.search import Searcher

from search_spaces import load_space
from tune.record.keys import DIVERGED, RAY_TRIAL_ID
from tune.record.study import open_storage
from tune.search.searcher import StudySearcher, settle_stopped_trials


def make_searcher(
    tmp_path: Path, max_epochs: int = 4, num_samples: int = -1, space: str = "default"
) -> StudySearcher:
    location = str(tmp_path / "optuna.journal")
    if not (tmp_path / "optuna.journal").exists():
        optuna.create_study(study_name="s", storage=open_storage(location, writer=True))
    return StudySearcher(
        space=load_space(space).to_optuna(),
        study_location=location,
        study_name="s",
        seed=0,
        max_epochs=max_epochs,
        num_samples=num_samples,
    )


def run(
    searcher: StudySearcher, trial_id: str, curve: list[float], *, suggest: bool = True, **complete
) -> None:
    if suggest:
        searcher.suggest(trial_id)
    for epoch, mse in enumerate(curve[:-1], start=1):
        searcher.on_trial_result(trial_id, {"epoch": epoch, "val_mse": mse})
    # Tune passes the result that ends a trial to on_trial_complete only.
    searcher.on_trial_complete(trial_id, result={"epoch": len(curve), "val_mse": curve[-1], **complete})


def study_trial(searcher: StudySearcher, trial_id: str) -> optuna.trial.FrozenTrial:
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
    # Stopped at epoch 2 of 4 (by ASHA): PRUNED, the stopping result included, valued at it.
    assert t.state == TrialState.PRUNED
    assert t.intermediate_values == {1: 1.3, 2: 1.1}
    assert t.value == pytest.approx(1.1)


def test_a_trial_that_trains_its_own_epochs_is_complete_when_it_reaches_them(tmp_path: Path):
    space = tmp_path / "length.yaml"
    space.write_text(
        "params:\n  epochs: {type: int, low: 2, high: 3}\n  lr: {type: float, low: 0.01, high: 0.1}\n"
    )
    searcher = make_searcher(tmp_path, max_epochs=10, space=str(space))
    for trial_id in ("a", "b", "c", "d"):
        epochs = searcher.suggest(trial_id)["epochs"]
        run(searcher, trial_id, [1.0, 0.9, 0.8][:epochs], suggest=False)
        # Its own length (2 or 3 epochs of 10): COMPLETE at its best epoch, not stopped.
        assert study_trial(searcher, trial_id).state == TrialState.COMPLETE
        assert study_trial(searcher, trial_id).value == pytest.approx([1.0, 0.9, 0.8][epochs - 1])
    # One ended a rung before its own end: stopped.
    epochs = searcher.suggest("e")["epochs"]
    run(searcher, "e", [1.0, 0.9, 0.8][: epochs - 1], suggest=False)
    assert study_trial(searcher, "e").state == TrialState.PRUNED


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


def test_no_more_live_trials_than_the_concurrency_limit(tmp_path: Path):
    searcher = make_searcher(tmp_path)
    assert searcher.set_max_concurrency(2)
    assert searcher.suggest("a") is not None and searcher.suggest("b") is not None
    # Both slots are taken: Tune is told to wait (None), not that the search is over.
    assert searcher.suggest("c") is None
    searcher.on_trial_complete("a", result={"epoch": 1, "val_mse": 1.0})
    assert searcher.suggest("c") is not None


def test_restore_runs_a_proposal_the_dead_driver_never_saved(tmp_path: Path):
    searcher = make_searcher(tmp_path)
    searcher.suggest("saved")
    searcher.save(str(tmp_path / "searcher.json"))  # with Tune's last snapshot before the kill
    lost_params = searcher.suggest("lost")  # asked after it: in the study, unknown to the snapshot
    searcher.on_trial_result("lost", {"epoch": 1, "val_mse": 1.1})

    restored = make_searcher(tmp_path)
    restored.restore(str(tmp_path / "searcher.json"))
    # The next trial Tune asks for runs the orphaned proposal instead of a new one, with its curve...
    assert restored.suggest("new") == lost_params
    restored.on_trial_result("new", {"epoch": 1, "val_mse": 1.1})  # the same epoch again: reported once
    restored.on_trial_complete("new", result={"epoch": 2, "val_mse": 1.0})
    restored.on_trial_complete("saved", result={"epoch": 4, "val_mse": 0.9})
    # ...so the study has one trial per Tune trial and none left RUNNING.
    states = {t.user_attrs[RAY_TRIAL_ID]: t.state for t in restored.study.trials}
    assert states == {"saved": TrialState.COMPLETE, "new": TrialState.PRUNED}
    assert study_trial(restored, "new").intermediate_values == {1: 1.1, 2: 1.0}


def test_restore_counts_trials_that_ended_after_the_save_against_num_samples(tmp_path: Path):
    searcher = make_searcher(tmp_path, num_samples=3)
    searcher.suggest("a")
    searcher.save(str(tmp_path / "searcher.json"))
    run(searcher, "b", [1.2, 1.1])  # asked and stopped after the save, then the driver died

    restored = make_searcher(tmp_path, num_samples=3)
    restored.restore(str(tmp_path / "searcher.json"))
    # Tune's equally old snapshot knows only "a", so it asks for two more; the study has room for one.
    assert restored.suggest("c") is not None
    assert restored.suggest("d") == Searcher.FINISHED
    assert len(restored.study.trials) == 3


def test_a_restored_searcher_does_not_propose_again_what_it_proposed(tmp_path: Path):
    searcher = make_searcher(tmp_path)
    first = [searcher.suggest(f"t{i}") for i in range(3)]
    searcher.save(str(tmp_path / "searcher.json"))
    restored = make_searcher(tmp_path)
    restored.restore(str(tmp_path / "searcher.json"))
    # Reopened with a seed of its own, TPE's random start-up does not repeat the first proposals.
    assert all(restored.suggest(f"u{i}") not in first for i in range(3))


def test_trials_the_time_budget_cut_off_are_settled_from_their_last_result(tmp_path: Path):
    searcher = make_searcher(tmp_path, max_epochs=4)
    for trial_id in ("cut", "never-started", "resumable"):
        searcher.suggest(trial_id)
    searcher.on_trial_result("cut", {"epoch": 1, "val_mse": 1.2})
    # Tune stopped "cut" after epoch 2 without telling the searcher, and "never-started" before
    # any epoch; "resumable" is not among the ended trials (an interrupted run goes on with it).
    ended = {"cut": {"epoch": 2, "val_mse": 1.1}, "never-started": {}}
    assert settle_stopped_trials(searcher.study, ended, max_epochs=4) == 2
    assert study_trial(searcher, "cut").state == TrialState.PRUNED
    assert study_trial(searcher, "cut").intermediate_values == {1: 1.2, 2: 1.1}
    assert study_trial(searcher, "never-started").state == TrialState.FAIL
    assert study_trial(searcher, "resumable").state == TrialState.RUNNING
