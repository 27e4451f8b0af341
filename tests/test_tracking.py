"""MLflow tracking of a real, small Ray Tune experiment, read back with MLflow's own client from the
real local SQLite tracking store the callback wrote (no server, no mocks)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from mlflow import MlflowClient
from ray import tune

from mf.errors import MFError
from tune.extras.tracking import BEST_TAG, MlflowTracking, default_tracking_uri, tag_best

X = [0.1, 0.5, 0.3, 0.95, 0.7, 0.2]  # 0.95 diverges at epoch 1


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, tune.ResultGrid]]:
    # Defined here, not at module level: the workers cannot import this test module, and a local
    # function travels to them by value.
    def trainable(config: dict) -> None:
        """val_mse = x + 1/epoch for 3 epochs; x > 0.9 diverges (inf, diverged=1) on its first epoch."""
        for epoch in range(1, 4):
            time.sleep(0.05)
            if config["x"] > 0.9:
                tune.report({"val_mse": math.inf, "epoch": epoch, "diverged": 1})
                return
            tune.report({"val_mse": config["x"] + 1 / epoch, "epoch": epoch, "diverged": 0})

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        storage = tmp_path_factory.mktemp("runs")
        folder = storage / "mlf"
        tracking = MlflowTracking(
            folder, experiment_name="mlf", max_epochs=3, params={"space": "test", "max_epochs": 3}
        )
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": 1}),
            param_space={"x": tune.grid_search(X)},
            tune_config=tune.TuneConfig(
                metric="val_mse",
                mode="min",
                reuse_actors=True,
                scheduler=tune.schedulers.ASHAScheduler(
                    time_attr="epoch", max_t=3, grace_period=1, reduction_factor=2
                ),
            ),
            run_config=tune.RunConfig(name="mlf", storage_path=str(storage), verbose=0, callbacks=[tracking]),
        )
        yield folder, tuner.fit()
    finally:
        ray.shutdown()


def _client(folder: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=default_tracking_uri(folder))


def _runs(folder: Path):  # type: ignore[no-untyped-def]
    client = _client(folder)
    (mlflow_experiment,) = client.search_experiments(filter_string="name = 'mlf'")
    runs = client.search_runs([mlflow_experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


@pytest.mark.slow
def test_parent_and_one_child_run_per_trial_with_history_and_outcome(
    experiment: tuple[Path, tune.ResultGrid],
) -> None:
    folder, grid = experiment
    # The default store is a SQLite file in the experiment folder.
    assert (folder / "mlflow.db").is_file()
    client, parents, children = _runs(folder)
    # One parent run for the experiment, finished, with the experiment's params.
    (parent,) = parents
    assert parent.info.status == "FINISHED" and parent.data.params == {"space": "test", "max_epochs": "3"}
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    # One child per trial, named by its Ray trial id, with its params.
    by_trial = {c.data.tags["ray_trial_id"]: c for c in children}
    results = {r.metrics["trial_id"]: r for r in grid}
    assert set(by_trial) == set(results) and len(children) == len(X)
    for trial_id, result in results.items():
        run, x = by_trial[trial_id], result.config["x"]
        assert run.info.run_name == trial_id and run.data.params == {"x": str(x)}
        history = client.get_metric_history(run.info.run_id, "val_mse")
        epochs = int(result.metrics["epoch"])
        if x > 0.9:
            # The diverged trial: FAIL (MLflow's run status FAILED), and its inf epoch is not in the history.
            assert run.data.tags["outcome"] == "FAIL" and run.info.status == "FAILED" and history == []
            continue
        # The per-epoch val_mse as a metric history, step = epoch, the values reported.
        assert [(m.step, round(m.value, 6)) for m in sorted(history, key=lambda m: m.step)] == [
            (e, round(x + 1 / e, 6)) for e in range(1, epochs + 1)
        ]
        # Its outcome: COMPLETE at max_epochs (3), else PRUNED by ASHA; both FINISHED runs.
        assert run.data.tags["outcome"] == ("COMPLETE" if epochs == 3 else "PRUNED")
        assert run.info.status == "FINISHED"
        assert run.data.metrics["best_val_mse"] == pytest.approx(x + 1 / epochs)
    # The parent sums them up: the best value and the count of each outcome.
    assert parent.data.metrics["best_val_mse"] == pytest.approx(0.1 + 1 / 3)
    outcomes = [c.data.tags["outcome"] for c in children]
    assert parent.data.metrics["trials_fail"] == outcomes.count("FAIL") == 1
    assert parent.data.metrics["trials_complete"] == outcomes.count("COMPLETE") >= 1


@pytest.mark.slow
def test_exported_best_is_tagged(experiment: tuple[Path, tune.ResultGrid], tmp_path: Path) -> None:
    folder, grid = experiment
    best = grid.get_best_result(metric="val_mse", mode="min", scope="all")
    config = tmp_path / "config.yaml"
    config.write_text("x: 0.1\n")
    run_id = tag_best(folder, best.metrics["trial_id"], metrics={"val_mse": 0.4333}, artifacts=[config])
    client, (parent,), children = _runs(folder)
    # Exactly the best trial's run carries the tag, the parent names it and its value, and the
    # exported file is an artifact of the best run.
    tagged = [c for c in children if c.data.tags.get(BEST_TAG) == "true"]
    assert [c.info.run_id for c in tagged] == [run_id] and tagged[0].data.params == {"x": "0.1"}
    assert parent.data.tags["best_trial_id"] == best.metrics["trial_id"]
    assert parent.data.metrics["best/val_mse"] == pytest.approx(0.4333)
    assert [a.path for a in client.list_artifacts(run_id, "best")] == ["best/config.yaml"]


@pytest.mark.slow
def test_resumed_tracking_continues_the_parent_run(experiment: tuple[Path, tune.ResultGrid]) -> None:
    folder, _ = experiment
    _, (before,), children_before = _runs(folder)
    # A resumed run (same folder, same store) reopens the recorded parent run rather than making
    # another, and logs no trial twice.
    MlflowTracking(folder, experiment_name="mlf", max_epochs=3).close()
    _, parents, children = _runs(folder)
    assert [p.info.run_id for p in parents] == [before.info.run_id] and parents[0].info.status == "FINISHED"
    assert len(children) == len(children_before)


def test_unusable_store_is_reported_naming_uri_and_log(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    uri = f"sqlite:///{tmp_path}/a-file/mlflow.db"  # a folder that cannot be made
    tracking = MlflowTracking(tmp_path / "exp", experiment_name="x", max_epochs=3, tracking_uri=uri)
    # The writer fails to open the store: close() says so in one line, naming the URI and its log.
    with pytest.raises(
        MFError, match=r"--mlflow sqlite:///.*/a-file/mlflow\.db: logging to MLflow failed .* see "
    ):
        tracking.close()


def test_callbacks_pickle_as_their_settings(tmp_path: Path) -> None:
    import pickle

    from tune.extras.progress import LiveProgress

    # Tune pickles the callbacks when the Tuner is made and a resume runs those copies: they come
    # back as configured, and not started (a started one, with its terminal stream, pickles too).
    tracking = MlflowTracking(tmp_path / "exp", experiment_name="x", max_epochs=7)
    copy = pickle.loads(pickle.dumps(tracking))
    assert copy.max_epochs == 7 and copy.tracking_uri == tracking.tracking_uri and copy._proc is None
    progress = LiveProgress(max_epochs=5, time_budget_s=60, interval_s=3)
    progress.setup()
    again = pickle.loads(pickle.dumps(progress))
    assert (again.max_epochs, again.time_budget_s, again.interval_s) == (5, 60, 3)
    progress.close()
