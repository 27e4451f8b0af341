"""The Python API: `import tune`, and README's example run as it is written there."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import ray

import tune
from tests.files import DATA_CACHE, REPO


def readme_example() -> str:
    """README.md's one Python block."""
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert len(blocks) == 1
    return blocks[0]


def test_tune_exposes_the_names_of_its_all_and_no_others():
    assert {"run_experiment", "export_best", "ExperimentSettings", "experiment_config"} <= set(tune.__all__)
    for name in tune.__all__:
        assert getattr(tune, name).__name__ == name
    with pytest.raises(AttributeError, match="module 'tune' has no attribute 'ASHA'"):
        tune.ASHA  # noqa: B018


def test_reading_an_experiment_through_tune_does_not_import_ray():
    code = "import sys, tune; tune.export_best, tune.collect_and_write_trials; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_an_experiment_config_holds_out_a_test_part_as_the_command_line_does(tmp_path: Path):
    # The same rule as `python -m tune.run`'s: a test part unless the keys set one, data by absolute path.
    assert tune.experiment_config({}).test_n == 5
    assert tune.experiment_config({"split": "random"}).test_fraction == 0.1
    assert tune.experiment_config({"test_n": 0}).test_n == 0
    ratings = tmp_path / "test.csv"
    ratings.write_text("userId,movieId,rating,timestamp\n1,1,4.0,1\n")
    config = tune.experiment_config({"test_data": str(ratings)})
    assert config.test_n == 0 and config.test_data == str(ratings.resolve())


def test_the_readme_example_runs_and_exports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MF_TUNE_DATA", str(DATA_CACHE))  # the bundled data, unpacked once for the tests
    namespace: dict = {}
    try:
        exec(readme_example(), namespace)
    finally:
        ray.shutdown()  # the example started a local Ray in this process
    metrics = namespace["metrics"]
    # Eight trials, the best confirmed, refit on train + validation, tested on each user's last 5 ratings.
    assert metrics["trials"] == 8 and metrics["trained_on"] == ["train", "val"]
    assert metrics["test_ratings"] == 3050 and 0.5 < metrics["test_mse"] < 1.5
    assert (tmp_path / "runs" / "small" / "best" / "model.pt").is_file()


def test_a_runs_own_tune_callbacks_join_tune_runs_own(tmp_path: Path):
    # Ray's loggers (MLflowLoggerCallback, WandbLoggerCallback) or a user's own: RunOptions.callbacks.
    from ray.tune import Callback

    from tune.extras.progress import LiveProgress
    from tune.search.experiment import make_run_config

    mine = Callback()
    settings = tune.ExperimentSettings(name="callbacks", storage_path=str(tmp_path))
    options = tune.RunOptions(callbacks=(mine,))
    callbacks = make_run_config(settings, options, dataset=None).callbacks
    # Called after the trial folders' logger and before the progress line, which is drawn last.
    assert callbacks.index(mine) == len(callbacks) - 2 and isinstance(callbacks[-1], LiveProgress)
