"""End to end: real Ray Tune experiments on the real ml-latest-small, on a small budget."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import ray
import torch
import yaml

from mf import train as mf_train
from mf.config import from_dict
from mf.training import Trainer, dataset_for, load_model
from tests.files import ml_latest_small
from tune import run as tune_run
from tune.export.best import export_best, export_best_ranking
from tune.record.study import JOURNAL_FILE, open_storage
from tune.record.trial_files import read_results
from tune.search.trainable import RunAhead, trial_config
from tune.settings import read_experiment, recorded_settings

DATA = ml_latest_small()


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray for the module's experiments (tune.run joins a running Ray)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def load_study(folder: Path) -> optuna.Study:
    return optuna.load_study(study_name=folder.name, storage=open_storage(str(folder / JOURNAL_FILE)))


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    """Eight trials of the default space, at most 4 epochs, ASHA from epoch 1 halving each rung; the
    best two configurations confirmed with two fresh seeds each; val NDCG@10 measured every epoch."""
    storage = tmp_path_factory.mktemp("runs")
    code = tune_run.main(
        [
            "--data", str(DATA),
            "--storage-path", str(storage),
            "--name", "small",
            "--num-samples", "8",
            "--max-epochs", "4",
            "--grace-period", "1",
            "--reduction-factor", "2",
            "--seed", "3",
            "--keep-checkpoints", "2",
            "--confirm-top", "2",
            "--confirm-seeds", "2",
            "--val-ndcg-k", "10",
        ]
    )  # fmt: skip
    assert code == 0
    return storage / "small"


def test_only_the_best_ended_trials_keep_a_checkpoint(experiment: Path):
    trials = pd.read_csv(experiment / "trials.csv").sort_values("best_val_mse")
    states = {t: list((experiment / f"trial_{t}").glob("checkpoint_*/state.pt")) for t in trials["trial_id"]}
    # Every trial checkpointed at each rung it reached (1, 2, 4); older checkpoints are deleted as
    # newer ones come, and once the trials ended only the best two (--keep-checkpoints) keep theirs.
    assert {t for t, files in states.items() if files} == set(trials["trial_id"][:2])
    assert all(len(files) <= 1 for files in states.values())
    # Each trial wrote its checkpoints into its folder, one folder per checkpointed epoch; the
    # last one it wrote is the epoch it ended on, where ASHA stopped it or max_epochs.
    for t, epochs in zip(trials["trial_id"], trials["epochs"], strict=True):
        folders = sorted(p.name for p in (experiment / f"trial_{t}").glob("checkpoint_*"))
        assert folders[-1] == f"checkpoint_epoch_{epochs:06d}"


def test_run_exports_the_confirmed_config_with_metrics_and_model(experiment: Path):
    best = experiment / "best"
    # The export holds everything needed to retrain and to serve.
    assert {p.name for p in best.iterdir()} == {"config.yaml", "metrics.json", "model.pt", "ranking.json"}
    metrics = json.loads((best / "metrics.json").read_text())
    config = yaml.safe_load((best / "config.yaml").read_text())
    # The default split holds out a test part, which only the export ever evaluates: 5 ratings of
    # each of the 610 users.
    assert config["test_n"] == 5 and math.isfinite(metrics["test_mse"]) and metrics["test_ratings"] == 3050
    # The exported model is the winner's configuration, with its first fresh seed, trained again on
    # train + validation for the epochs where its mean over the seeds was best (--refit train+val),
    # and the config says so: that seed, those epochs, those parts, the data by absolute path.
    confirmation = metrics["confirmation"]
    assert metrics["trained_on"] == ["train", "val"] and config["train_on"] == "train+val"
    assert config["epochs"] == metrics["epoch"] == confirmation["epoch"]
    assert config["seed"] == confirmation["seeds"][0]
    assert Path(config["data"]).is_absolute()
    # It is the average of five such runs with different seeds (--ensemble, 5 by default): one
    # model, five times as wide.
    assert config["ensemble"] == metrics["refit"]["ensemble"] == 5
    assert load_model(best / "model.pt")[0].user_emb.embedding_dim == 5 * config["emb_dim"]
    # The chosen run itself (trained on train) keeps its figures beside: its val MSE, a selection
    # figure, and its test MSE, so that the refit's effect shows in every run.
    train_only = metrics["train_only"]
    assert train_only["trained_on"] == ["train"] and "val_mse" not in metrics
    for key in ("val_mse", "val_rmse", "val_mae", "val_f1", "test_mse", "test_ndcg@10"):
        assert math.isfinite(train_only[key])
    # It is the configuration with the best mean over two fresh seeds, among the top two of the search.
    trials = pd.read_csv(experiment / "trials.csv").set_index("trial_id")
    confirmed = trials[trials["confirm_val_mse"].notna()]
    assert len(confirmed) == 2
    assert set(confirmed.index) <= set(trials["best_val_mse"].nsmallest(4).index)
    assert confirmed["confirm_val_mse"].idxmin() == metrics["trial_id"]
    assert confirmation["val_mse_mean"] == pytest.approx(confirmed["confirm_val_mse"].min())
    assert len(confirmation["seeds"]) == 2
    # The search's own best figure stays on record beside it.
    assert metrics["search_best_val_mse"] == pytest.approx(trials.loc[metrics["trial_id"], "best_val_mse"])
    # The tutorial's configuration was trained on the same split and the same parts, for comparison.
    tutorial = metrics["tutorial"]
    assert math.isfinite(tutorial["test_mse"]) and tutorial["epochs"] == 10
    assert tutorial["config"]["train_on"] == "train+val" and "val_mse" not in tutorial


def test_run_exports_the_best_ranking_trial_beside_the_best_rating_one(experiment: Path):
    trials = pd.read_csv(experiment / "trials.csv").set_index("trial_id")
    # Every trial measured val NDCG@10 each epoch, and the study keeps each one's best beside its
    # val MSE value: both objectives, one trial record.
    assert trials["best_val_ndcg"].between(0, 1).all()
    for t in load_study(experiment).trials:
        row = trials.loc[t.user_attrs["ray_trial_id"]]
        assert t.user_attrs["best_val_ndcg"] == pytest.approx(row["best_val_ndcg"])
    # best-ranking/ is the trial best by val NDCG, trained again to its best NDCG epoch.
    folder = experiment / "best-ranking"
    assert {p.name for p in folder.iterdir()} == {"config.yaml", "metrics.json", "model.pt", "ranking.json"}
    metrics = json.loads((folder / "metrics.json").read_text())
    config = yaml.safe_load((folder / "config.yaml").read_text())
    best = trials["best_val_ndcg"].idxmax()
    assert metrics["trial_id"] == best and metrics["objective"] == "val NDCG@10"
    assert config["epochs"] == metrics["epoch"] == trials.loc[best, "ndcg_epoch"]
    assert metrics["search_best_val_ndcg"] == pytest.approx(trials.loc[best, "best_val_ndcg"])
    # The retrain lands where the search did (a thread count apart), and the export's own ranking
    # evaluation of that model agrees with the trainer's per-epoch figure.
    assert metrics["retrained_val_ndcg"] == pytest.approx(metrics["search_best_val_ndcg"], abs=0.01)
    assert metrics["train_only"]["val_ndcg@10"] == pytest.approx(metrics["retrained_val_ndcg"], abs=1e-6)
    # Then refit on train + validation by the same rule as best/: its test figures are the refit's.
    assert metrics["trained_on"] == ["train", "val"] and config["train_on"] == "train+val"
    assert math.isfinite(metrics["test_mse"]) and "served" in metrics["ranking"]


def test_run_trials_csv_has_every_trial_with_outcome_and_node(experiment: Path):
    trials = pd.read_csv(experiment / "trials.csv")
    # Every planned trial has a row, an outcome, the epochs it ran and where it ran.
    assert len(trials) == 8
    assert set(trials["outcome"]) <= {"COMPLETE", "PRUNED"}
    assert (trials["epochs"] >= 1).all() and (trials["epochs"] <= 4).all()
    assert trials["node_id"].notna().all()
    assert {"param_emb_dim", "param_lr", "param_l2", "param_sigmoid_high"} <= set(trials.columns)
    # ASHA stopped some trials, so fewer epochs were spent than running all to the end.
    assert (trials["outcome"] == "PRUNED").any()
    assert trials["epochs"].sum() < 8 * 4


def test_run_tells_optuna_the_truth(experiment: Path):
    study = load_study(experiment)
    trials = pd.read_csv(experiment / "trials.csv").set_index("optuna_number")
    states = {t.state for t in study.trials}
    # Stopped trials are PRUNED, finished ones COMPLETE; none is left RUNNING.
    assert states <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    assert optuna.trial.TrialState.PRUNED in states
    for t in study.trials:
        row = trials.loc[t.number]
        # Each epoch is an intermediate value at step = epoch, as Tune saw it.
        assert sorted(t.intermediate_values) == list(range(1, int(row["epochs"]) + 1))
        assert t.state.name == row["outcome"]
        if t.state == optuna.trial.TrialState.COMPLETE:
            # A finished trial's value is its best epoch, not its last.
            assert t.value == pytest.approx(min(t.intermediate_values.values()))
        else:
            # A pruned trial ran fewer epochs than max_epochs, and its value is its last epoch's.
            assert len(t.intermediate_values) < 4
            assert t.value == pytest.approx(t.intermediate_values[max(t.intermediate_values)])


def same_weights(a: Path, b: Path) -> bool:
    """Whether two model.pt files hold the same weights."""
    wa, wb = load_model(a)[0].state_dict(), load_model(b)[0].state_dict()
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_train_reproduces_the_exported_refit_exactly(experiment: Path, tmp_path: Path):
    exported = json.loads((experiment / "best" / "metrics.json").read_text())
    code = mf_train.main(
        ["--config", str(experiment / "best" / "config.yaml"), "--out", str(tmp_path), "--quiet"]
    )
    assert code == 0
    retrained = json.loads((tmp_path / "metrics.json").read_text())
    # The refit was trained in this process, as mf.train trains: the same weights, the same test MSE.
    assert retrained["trained_on"] == ["train", "val"] and "val_mse" not in retrained
    assert same_weights(tmp_path / "model.pt", experiment / "best" / "model.pt")
    assert retrained["test_mse"] == pytest.approx(exported["test_mse"], abs=1e-9)


def test_refit_none_exports_the_chosen_run_as_it_was(experiment: Path, tmp_path: Path):
    copy = tmp_path / experiment.name
    shutil.copytree(experiment, copy)
    refit = json.loads((experiment / "best" / "metrics.json").read_text())
    metrics = export_best(copy, quiet=True, refit="none")
    # The winner's first fresh seed's run at its own best epoch, trained on train: its figures are
    # the ones the refit export keeps under train_only.
    assert metrics["trained_on"] == ["train"] and "train_only" not in metrics
    figures = {k: v for k, v in refit["train_only"].items() if k.startswith(("val_", "test_"))}
    assert len(figures) == 18 and {k: metrics[k] for k in figures} == pytest.approx(figures)
    # The tutorial's reference trains on train too, and so has a val figure.
    assert metrics["tutorial"]["config"]["train_on"] == "train" and "val_mse" in metrics["tutorial"]
    # Retraining its config from scratch lands within 0.01 of its val MSE (the run trained in a Ray
    # task with one thread, the retrain with torch's default).
    assert (
        mf_train.main(
            ["--config", str(copy / "best" / "config.yaml"), "--out", str(tmp_path / "r"), "--quiet"]
        )
        == 0
    )
    retrained = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert abs(retrained["val_mse"] - metrics["val_mse"]) <= 0.01


@pytest.mark.slow
def test_refit_all_serves_a_model_of_every_rating_and_reports_the_train_val_refits_test(
    experiment: Path, tmp_path: Path
):
    copy = tmp_path / experiment.name
    shutil.copytree(experiment, copy)
    refit = json.loads((experiment / "best" / "metrics.json").read_text())
    metrics = export_best(copy, quiet=True, refit="all")
    config = yaml.safe_load((copy / "best" / "config.yaml").read_text())
    # The model trained on every rating; no figure can be held out from it, so the test figures are
    # the train + validation refit's, and metrics.json says so.
    assert metrics["trained_on"] == ["train", "val", "test"] and config["train_on"] == "all"
    assert metrics["test_from"] == ["train", "val"]
    assert metrics["test_mse"] == pytest.approx(refit["test_mse"], abs=1e-9)
    # It retrains exactly from its config.
    assert (
        mf_train.main(
            ["--config", str(copy / "best" / "config.yaml"), "--out", str(tmp_path / "r"), "--quiet"]
        )
        == 0
    )
    assert same_weights(tmp_path / "r" / "model.pt", copy / "best" / "model.pt")


def test_a_trial_trains_its_next_epoch_early_only_where_asha_cannot_stop_it(experiment: Path):
    # ASHA may stop a trial after epochs 1 and 2 (its rungs) and 4 (max_epochs); after epoch 3 it
    # cannot, so epoch 4 is trained while the driver handles epoch 3's report.
    ran_ahead = 0
    for folder in experiment.glob("trial_*"):
        results = {r["epoch"]: r for r in read_results(folder)}
        for epoch, result in results.items():
            expected = epoch == 4 and results[3]["epoch_seconds"] < RunAhead.max_epoch_s
            assert result["ran_ahead"] == int(expected), (folder.name, epoch)
            ran_ahead += result["ran_ahead"]
    assert ran_ahead >= 1


def test_a_trial_trains_what_the_trainer_alone_trains(experiment: Path):
    """Running ahead changes when an epoch is trained, not what it computes."""
    trials = pd.read_csv(experiment / "trials.csv")
    longest = trials.loc[trials["epochs"].idxmax()]
    assert longest["epochs"] == 4  # so its epoch 4 ran ahead
    folder = experiment / f"trial_{longest['trial_id']}"
    params = json.loads((folder / "params.json").read_text())
    recorded = read_experiment(experiment)
    base, settings = from_dict(recorded["base_config"]), recorded_settings(recorded)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the trial ran: one CPU, one thread
    try:
        config = trial_config(base, params, int(longest["epochs"]), own_seed=settings.own_trial_seeds)
        trainer = Trainer(config, dataset_for(base))
        alone = [m["val_mse"] for m in trainer.fit()]
    finally:
        torch.set_num_threads(threads)
    in_tune = [r["val_mse"] for r in read_results(folder)]
    assert in_tune == pytest.approx(alone, rel=1e-6)


def test_export_rewrites_the_same_best_from_the_folder(experiment: Path):
    before = json.loads((experiment / "best" / "metrics.json").read_text())
    metrics = export_best(experiment, quiet=True)
    # tune.export on a finished folder gives the same best trial and metrics.
    assert metrics["trial_id"] == before["trial_id"]
    assert metrics["test_mse"] == pytest.approx(before["test_mse"])
    assert metrics["train_only"]["val_mse"] == pytest.approx(before["train_only"]["val_mse"])
    assert not list(experiment.glob(".best-*"))


def test_a_ranking_export_that_cannot_end_by_the_deadline_is_left_as_it_was_and_said(
    experiment: Path, capsys
):
    before = (experiment / "best-ranking" / "metrics.json").read_bytes()
    # tune.run gives the exports the end of its budget; here that end has passed.
    assert export_best_ranking(experiment, quiet=True, deadline=time.time() - 1) is None
    out = capsys.readouterr().out
    assert "did not fit in the 0 s left of the budget" in out and "python -m tune.export" in out
    assert (experiment / "best-ranking" / "metrics.json").read_bytes() == before


def test_diverging_trial_fails_and_experiment_goes_on(tmp_path: Path):
    space = tmp_path / "space.yaml"
    space.write_text("params:\n  lr: {type: categorical, choices: [1.0e+12, 0.01]}\n")
    code = tune_run.main(
        [
            "--data", str(DATA),
            "--storage-path", str(tmp_path / "runs"),
            "--name", "nan",
            "--space", str(space),
            "--num-samples", "5",
            "--max-epochs", "2",
            "--grace-period", "2",
            "--sigmoid", "false",
            "--init", "false",
            "--weight-decay", "0",
            "--seed", "1",
        ]
    )  # fmt: skip
    # The experiment finishes and exports a healthy trial.
    assert code == 0
    folder = tmp_path / "runs" / "nan"
    trials = pd.read_csv(folder / "trials.csv")
    diverged = trials["param_lr"] > 1
    assert diverged.any() and (~diverged).any()
    # Each diverged trial is FAIL (not retried: divergence is deterministic), the others COMPLETE.
    assert (trials.loc[diverged, "outcome"] == "FAIL").all()
    assert (trials.loc[diverged, "retries"] == 0).all()
    assert trials.loc[diverged, "error"].str.contains("diverges").all()
    assert (trials.loc[~diverged, "outcome"] == "COMPLETE").all()
    study = load_study(folder)
    states = {t.params["lr"] > 1: t.state for t in study.trials}
    assert states[True] == optuna.trial.TrialState.FAIL
    assert states[False] == optuna.trial.TrialState.COMPLETE
    best = json.loads((folder / "best" / "metrics.json").read_text())
    assert best["params"]["lr"] == 0.01 and math.isfinite(best["test_mse"])


def test_bad_space_is_rejected_before_ray_work(tmp_path: Path, capsys):
    space = tmp_path / "bad.yaml"
    space.write_text("params:\n  lr: {type: float, low: 0.1, high: 0.01, log: true}\n")
    code = tune_run.main(["--data", str(DATA), "--space", str(space), "--storage-path", str(tmp_path)])
    # One clear message naming the file and the parameter; nothing written.
    err = capsys.readouterr().err
    assert code == 2
    assert str(space) in err and "lr" in err and "Traceback" not in err
    assert not any(tmp_path.glob("mf-tune*"))


def test_tuned_key_also_fixed_is_rejected(tmp_path: Path, capsys):
    code = tune_run.main(["--data", str(DATA), "--lr", "0.01", "--storage-path", str(tmp_path)])
    # lr is in the default space: fixing it too is a mistake the user hears about.
    assert code == 2
    assert "lr" in capsys.readouterr().err


def test_existing_experiment_name_is_not_overwritten(experiment: Path, capsys):
    before = (experiment / "trials.csv").read_bytes()
    code = tune_run.main(
        ["--data", str(DATA), "--storage-path", str(experiment.parent), "--name", experiment.name]
    )
    # A second run with the same name stops with a message; the first experiment is untouched.
    assert code == 2
    assert "--resume" in capsys.readouterr().err
    assert (experiment / "trials.csv").read_bytes() == before


@pytest.mark.slow
def test_warm_start_seeds_the_new_study_with_earlier_trials(experiment: Path, tmp_path: Path):
    code = tune_run.main(
        [
            "--data", str(DATA),
            "--storage-path", str(tmp_path),
            "--name", "warm",
            "--confirm-top", "0",
            "--warm-start", str(experiment),
            "--num-samples", "2",
            "--max-epochs", "4",
            "--grace-period", "1",
            "--reduction-factor", "2",
            "--seed", "3",
        ]
    )  # fmt: skip
    assert code == 0
    earlier = load_study(experiment)
    study = load_study(tmp_path / "warm")
    copied = [t for t in study.trials if "warm_start_from" in t.user_attrs]
    # Every finished trial of the earlier study is in the new one (with its curve), plus the 2 new trials.
    assert len(copied) == len(earlier.trials)
    assert sorted(t.value for t in copied) == pytest.approx(sorted(t.value for t in earlier.trials))
    assert all(t.intermediate_values for t in copied)
    assert len(study.trials) == len(earlier.trials) + 2
    # trials.csv lists only this experiment's own trials.
    assert len(pd.read_csv(tmp_path / "warm" / "trials.csv")) == 2


@pytest.mark.slow
def test_test_n_0_runs_on_the_tutorials_split_with_no_test_part(tmp_path: Path):
    code = tune_run.main(
        [
            "--data", str(DATA),
            "--storage-path", str(tmp_path),
            "--name", "tutorial-split",
            "--test-n", "0",
            "--num-samples", "2",
            "--max-epochs", "2",
            "--grace-period", "2",
            "--confirm-top", "0",
        ]
    )  # fmt: skip
    assert code == 0
    metrics = json.loads((tmp_path / "tutorial-split" / "best" / "metrics.json").read_text())
    # Validation is each user's last 5 ratings, as in the tutorial, and nothing is held out beyond it.
    assert "test_mse" not in metrics and "test_ratings" not in metrics
    # Without confirmation, the chosen model is the search's best trial at its best epoch; the export
    # is that configuration refit on train + validation, with no held-out figure of its own.
    assert "confirmation" not in metrics and metrics["trained_on"] == ["train", "val"]
    assert metrics["train_only"]["val_mse"] == pytest.approx(metrics["search_best_val_mse"], abs=1e-6)
    # The tutorial's reference trains on train, so that it has a val figure to stand beside.
    assert math.isfinite(metrics["tutorial"]["val_mse"])


def test_a_test_file_of_its_own_is_scored_on_its_known_ratings(tmp_path: Path, capsys):
    ratings = pd.read_csv(DATA / "ratings.csv")
    test = ratings.groupby("userId").tail(3)  # each user's last 3 rows of the file: the test part
    unknown = test.head(7).assign(userId=test["userId"].head(7) + 100_000)
    pd.concat([test, unknown]).to_csv(tmp_path / "test.csv", index=False)
    train = ratings.drop(test.index)
    train.to_csv(tmp_path / "train.csv", index=False)
    # Known: a user and a movie that the training file has (some movies were rated only there).
    known = int((test["userId"].isin(train["userId"]) & test["movieId"].isin(train["movieId"])).sum())
    assert 1_600 < known < 1_830
    code = tune_run.main(
        [
            "--data", str(tmp_path / "train.csv"),
            "--test-data", str(tmp_path / "test.csv"),
            "--storage-path", str(tmp_path),
            "--name", "own-test",
            "--num-samples", "2",
            "--max-epochs", "2",
            "--grace-period", "2",
            "--confirm-top", "0",
        ]
    )  # fmt: skip
    assert code == 0
    metrics = json.loads((tmp_path / "own-test" / "best" / "metrics.json").read_text())
    # The known ratings are scored; the others, and the 7 of unknown users, are counted apart.
    assert metrics["test_ratings"] == known and metrics["test_unseen"] == 1830 + 7 - known
    # The run's first line leads with that figure, and the export says what was left out.
    out = capsys.readouterr().out
    assert f"result: test_mse {metrics['test_mse']:.4f} on {known:,} ratings" in out
    assert f"{1830 + 7 - known} of unknown users or items left out" in out


@pytest.mark.slow
def test_a_time_budget_is_shared_by_the_search_and_the_confirmation_of_its_best(tmp_path: Path):
    code = tune_run.main(
        [
            "--data", str(DATA),
            "--storage-path", str(tmp_path),
            "--name", "budget",
            "--num-samples", "-1",
            "--time-budget-s", "40",
            "--max-epochs", "4",
            "--emb-dim", "16",
            "--space", "ablation",
            "--confirm-top", "2",
            "--confirm-seeds", "2",
            "--confirm-share", "0.6",
        ]
    )  # fmt: skip
    assert code == 0
    folder = tmp_path / "budget"
    study = load_study(folder)
    trials = pd.read_csv(folder / "trials.csv").set_index("optuna_number")
    # Trials cut off by the budget are PRUNED (or FAIL without an epoch): none stays RUNNING.
    assert all(t.state.is_finished() for t in study.trials)
    for t in study.trials:
        assert t.state.name == trials.loc[t.number, "outcome"]
    # Both got their part: the search ran trials to their end before the budget's end, and the
    # confirmation then ran its best configurations with fresh seeds. (How much of the budget the
    # reserve keeps for it is tests/test_confirmation_reserve.py's.)
    assert (trials["outcome"] == "COMPLETE").sum() >= 2
    summary = json.loads((folder / "confirm" / "summary.json").read_text())
    assert summary["planned_runs"] >= 2 and summary["confirmed"]
