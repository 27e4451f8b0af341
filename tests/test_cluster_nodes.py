"""Several Ray nodes on one machine (ray.cluster_utils.Cluster, as Ray's own Tune tests do).

A head with no CPUs (it runs no trials) and worker nodes; `tune.run --address` joins them.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import ray
from ray.cluster_utils import Cluster

from tests.files import ml_latest_small
from tune import run as tune_run
from tune.record.study import JOURNAL_FILE, open_storage

DATA = ml_latest_small()
pytestmark = pytest.mark.slow

FAST_HEALTH_CHECKS = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 1000,
    "health_check_failure_threshold": 10,
}


@pytest.fixture
def cluster():
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "_system_config": FAST_HEALTH_CHECKS}
    )
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def tune_on(cluster: Cluster, storage: Path, name: str, *extra: str) -> pd.DataFrame:
    code = tune_run.main(
        [
            "--address", cluster.address,
            "--data", str(DATA),
            "--storage-path", str(storage),
            "--name", name,
            "--seed", "2",
            *extra,
        ]
    )  # fmt: skip
    assert code == 0
    return pd.read_csv(storage / name / "trials.csv")


def results(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_trials_spread_over_worker_nodes(cluster: Cluster, tmp_path: Path):
    workers = {cluster.add_node(num_cpus=1).node_id for _ in range(2)}
    cluster.wait_for_nodes()
    trials = tune_on(
        cluster, tmp_path, "spread",
        # Trials long enough (~5 s) that the second node's worker is up before the first node is free.
        "--num-samples", "4", "--max-epochs", "30", "--grace-period", "30", "--emb-dim", "256", "--space", "ablation",
        "--confirm-top", "0",
    )  # fmt: skip
    # Every trial ran on a worker (the head has no CPU), and both workers ran trials.
    assert set(trials["node_id"]) == workers


def test_lost_node_trials_resume_from_checkpoint_elsewhere(cluster: Cluster, tmp_path: Path):
    doomed = cluster.add_node(num_cpus=1)
    for _ in range(2):  # survivors (add_node only works from the main thread, so no replacement later)
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    folder = tmp_path / "lost"
    removed = threading.Event()

    def remove_node_mid_trial() -> None:
        """Once a trial on the doomed node has checkpointed and is still training, kill the node."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not removed.is_set():
            for trial_dir in folder.glob("trial_*"):
                rows = results(trial_dir)
                on_doomed = rows and rows[-1]["node_id"] == doomed.node_id and not rows[-1].get("done")
                if on_doomed and rows[-1]["epoch"] >= 2 and list(trial_dir.glob("checkpoint_*")):
                    removed.set()
                    cluster.remove_node(doomed)  # kills the node's raylet and workers
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=remove_node_mid_trial, daemon=True)
    killer.start()
    trials = tune_on(
        cluster, tmp_path, "lost",
        "--num-samples", "4", "--max-epochs", "30", "--grace-period", "30",
        "--checkpoint-every", "1", "--emb-dim", "256", "--max-failures", "3",
        "--space", "ablation", "--confirm-top", "0",
    )  # fmt: skip
    killer.join()
    assert removed.is_set(), "the doomed node never ran a checkpointed trial"

    # Every planned trial has an outcome; none was lost.
    assert len(trials) == 4
    assert (trials["outcome"] == "COMPLETE").all()
    retried = trials[trials["retries"] > 0]
    assert len(retried) >= 1
    for trial_id in retried["trial_id"]:
        rows = results(folder / f"trial_{trial_id}")
        nodes = [r["node_id"] for r in rows]
        restart = next(i for i in range(1, len(rows)) if nodes[i] != nodes[i - 1])
        # The trial ran on the lost node, then resumed on a survivor from its last checkpoint (epoch > 1),
        # repeating at most the epochs after that checkpoint, and finished.
        assert nodes[restart - 1] == doomed.node_id and nodes[restart] != doomed.node_id
        assert 1 < rows[restart]["epoch"] <= rows[restart - 1]["epoch"] + 1
        assert rows[-1]["epoch"] == 30
    # The study agrees: one finished trial per planned trial.
    study = optuna.load_study(study_name="lost", storage=open_storage(str(folder / JOURNAL_FILE)))
    assert len(study.trials) == 4 and all(t.state.is_finished() for t in study.trials)


def test_four_trials_share_one_gpu(cluster: Cluster, tmp_path: Path):
    # A node that declares one GPU (none is needed: Ray schedules the declared resource).
    gpu_node = cluster.add_node(num_cpus=4, num_gpus=1)
    cluster.wait_for_nodes()
    trials = tune_on(
        cluster, tmp_path, "gpu",
        "--num-samples", "8", "--max-epochs", "20", "--grace-period", "20",
        "--gpus-per-trial", "0.25", "--emb-dim", "256", "--space", "ablation",
        "--confirm-top", "2", "--confirm-seeds", "1",  # the confirmation's tasks hold GPU shares too
    )  # fmt: skip
    assert set(trials["node_id"]) == {gpu_node.node_id}
    actors: dict[int, tuple[float, float]] = {}  # worker pid -> (first start, last end) of its trials
    for trial_id in trials["trial_id"]:
        rows = results(tmp_path / "gpu" / f"trial_{trial_id}")
        # Each trial held a share of GPU 0.
        assert {r["gpu_ids"] for r in rows} == {"0"}
        start, end = rows[0]["wall_time"] - rows[0]["time_this_iter_s"], rows[-1]["wall_time"]
        first, last = actors.get(rows[0]["pid"], (start, end))
        actors[rows[0]["pid"]] = (min(first, start), max(last, end))
    # A reused worker holds its 0.25 GPU for its whole life: four of them were alive at once, never more.
    peak = max(sum(start <= t < end for start, end in actors.values()) for t, _ in actors.values())
    assert peak == 4
