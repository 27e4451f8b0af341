"""bench.replicates on one small real tuning run: an export retrained with a seed it already saw
gives back what the run saw, and a bench.quality work dir gives both tools' exports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray
import yaml

from bench import replicates
from tests.files import ml_latest_small
from tune import run as tune_run
from tune.export.confirmation import read_run, read_summary

DATA = ml_latest_small()

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    """Four trials of the default space, 3 epochs at most, the top 2 confirmed with 2 seeds."""
    storage = tmp_path_factory.mktemp("runs")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        code = tune_run.main(
            [
                "--data", str(DATA), "--storage-path", str(storage), "--name", "replay",
                "--num-samples", "4", "--max-epochs", "3", "--grace-period", "1", "--reduction-factor", "2",
                "--max-concurrent", "1", "--seed", "1", "--confirm-top", "2", "--confirm-seeds", "2",
            ]
        )  # fmt: skip
    finally:
        ray.shutdown()
    assert code == 0
    return storage / "replay"


def test_an_export_retrained_with_its_own_seed_gives_back_the_runs_curve(experiment: Path):
    (export,) = replicates.exports_in(experiment, data=str(DATA), max_epochs=3)
    metrics = json.loads((experiment / "best" / "metrics.json").read_text())
    assert (export.tool, export.config.epochs) == ("ours", 3)  # the search's max_epochs, not the export's
    assert export.search_val_mse == metrics["search_best_val_mse"]
    winner = read_summary(experiment)[0]
    seed = winner.seeds[0]
    assert export.config.seed == seed  # the export is the winner's first confirmation run
    again = replicates.replicate(export, [seed], datasets={})
    assert again.val_mse[0] == pytest.approx(
        min(read_run(experiment, winner.trial_id, seed).values()), rel=1e-4
    )
    assert again.test_mse and again.test_mse[0] > 0


def test_a_quality_work_dir_gives_both_tools_exports_paired_by_seed(experiment: Path, tmp_path: Path):
    (tmp_path / "ours").mkdir()
    (tmp_path / "ours" / "seed1").symlink_to(experiment, target_is_directory=True)
    (tmp_path / "split.yaml").write_text(yaml.safe_dump({"split": "last-n", "test_n": 0}))
    params = {"emb_dim": 12, "lr": 0.03, "l2": 0.1, "weight_decay": 0.3}
    (tmp_path / "optuna-1.json").write_text(
        json.dumps({"best": {"params": params, "epoch": 2, "val_mse": 0.9}})
    )

    ours, optuna = replicates.exports_in(tmp_path, data=str(DATA), max_epochs=5)
    assert (ours.tool, ours.seed, optuna.tool, optuna.seed) == ("ours", 1, "optuna", 1)
    assert optuna.search_val_mse == 0.9
    assert (optuna.config.emb_dim, optuna.config.test_n, optuna.config.epochs) == (12, 0, 5)
    assert ours.config.test_n == 5  # each export keeps the split its search ran on


def test_the_cli_prints_a_row_per_export_and_rejects_a_folder_without_one(experiment: Path, tmp_path, capsys):
    assert replicates.main([str(experiment), "--seeds", "100"]) == 0
    out = capsys.readouterr().out
    assert "1 exports x 1 fresh seeds" in out and "\nours " in out
    with pytest.raises(SystemExit, match="neither an experiment folder"):
        replicates.main([str(tmp_path)])
