"""Driver restarts: a tuning run killed with SIGKILL and resumed loses no work and no decisions."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from tests.files import ml_latest_small
from tune.record.study import JOURNAL_FILE, open_storage
from tune.record.trial_files import read_results
from tune.search.scheduler import ASHA_STATE_FILE, PersistentASHA

REPO = Path(__file__).resolve().parents[1]
DATA = ml_latest_small()


# ---------------------------------------------------------------- ASHA's rungs across a restart
def curve_stream(n_trials: int = 24, max_t: int = 9, seed: int = 0) -> list[tuple[str, int, float]]:
    """Results as a running experiment sends them: trials interleaved, each a falling val MSE curve."""
    rng = np.random.default_rng(seed)
    floors = rng.uniform(0.8, 1.2, n_trials)
    starts = rng.integers(0, 12, n_trials)  # trials start at different times
    events = []
    for i in range(n_trials):
        for epoch in range(1, max_t + 1):
            mse = floors[i] + 0.6 / epoch + rng.normal(0, 0.01)
            events.append((starts[i] + epoch + rng.uniform(0, 0.5), f"t{i:02d}", epoch, mse))
    return [(trial, epoch, mse) for _, trial, epoch, mse in sorted(events)]


def decide(scheduler, stream, trials: dict[str, Trial], stopped: set[str]) -> dict[str, int]:
    """Feed results to the scheduler; return the epoch at which each stopped trial was stopped."""
    stops = {}
    for trial_id, epoch, mse in stream:
        if trial_id in stopped:
            continue
        if trial_id not in trials:
            trials[trial_id] = Trial("__fake", trial_id=trial_id, stub=True)
            scheduler.on_trial_add(None, trials[trial_id])
        decision = scheduler.on_trial_result(None, trials[trial_id], {"epoch": epoch, "val_mse": mse})
        if decision == TrialScheduler.STOP:
            stopped.add(trial_id)
            stops[trial_id] = epoch
    return stops


def asha_args() -> dict:
    return dict(time_attr="epoch", metric="val_mse", mode="min", max_t=9, grace_period=1, reduction_factor=3)


def test_persistent_asha_makes_the_same_decisions_across_a_restart(tmp_path: Path):
    stream = curve_stream()
    half = len(stream) // 2
    # Without a restart.
    reference = decide(PersistentASHA(state_path=tmp_path / "a.json", **asha_args()), stream, {}, set())

    # With one: the scheduler is pickled at the start (as Tuner does into tuner.pkl), runs half the
    # stream, the driver dies, and Tuner.restore unpickles the start-of-run copy.
    scheduler = PersistentASHA(state_path=tmp_path / "b.json", **asha_args())
    at_start = pickle.dumps(scheduler)
    trials, stopped = {}, set()
    before = decide(scheduler, stream[:half], trials, stopped)
    restored = pickle.loads(at_start)
    for trial in trials.values():  # Tune adds the restored trials to the scheduler again
        restored.on_trial_add(None, trial)
    after = decide(restored, stream[half:], trials, stopped)
    # The same trials are stopped, at the same epochs.
    assert {**before, **after} == reference
    assert len(reference) > 10


def test_stock_asha_loses_its_rungs_across_a_restart(tmp_path: Path):
    # The bug PersistentASHA fixes (ray-project/ray#30838), shown on the same stream.
    stream = curve_stream()
    half = len(stream) // 2
    reference = decide(ASHAScheduler(**asha_args()), stream, {}, set())
    scheduler = ASHAScheduler(**asha_args())
    at_start = pickle.dumps(scheduler)
    trials, stopped = {}, set()
    before = decide(scheduler, stream[:half], trials, stopped)
    restored = pickle.loads(at_start)
    for trial in trials.values():
        restored.on_trial_add(None, trial)
    after = decide(restored, stream[half:], trials, stopped)
    assert {**before, **after} != reference


# ---------------------------------------------------------------- a real driver killed and resumed
def start_run(storage: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    args = [
        sys.executable, "-m", "tune.run",
        "--data", str(DATA),
        "--storage-path", str(storage),
        "--name", "killed",
        "--num-samples", "10",
        "--max-epochs", "9",
        "--grace-period", "1",
        "--reduction-factor", "3",
        "--emb-dim", "256",  # slower epochs, so the kill lands mid-run
        "--space", str(storage.parent / "space.yaml"),
        "--seed", "5",
        "--confirm-top", "0",
        *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.Popen(
        args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def resumable_trials(folder: Path) -> list[str]:
    """Trials that Tune's last snapshot lists as running, and whose folder holds a checkpoint."""
    snapshots = list(folder.glob("experiment_state-*.json"))
    try:
        trials = [json.loads(t[0]) for t in json.loads(snapshots[0].read_text())["trial_data"]]
    except (IndexError, ValueError):  # none yet, or caught mid-write
        return []
    return [
        t["trial_id"]
        for t in trials
        if t["status"] == "RUNNING"
        and list(folder.glob(f"trial_{t['trial_id']}/checkpoint_*/state.pt"))
        and not any(r.get("done") for r in read_results(folder / f"trial_{t['trial_id']}"))
    ]


@pytest.mark.parametrize(
    "snapshot_every_s",
    [
        # Tune snapshots the experiment (which trials exist, their status) every second: the
        # resumed run finds running trials in it, and they go on from their checkpoints.
        "1",
        # Tune snapshots only at the start: the resumed run knows none of the trials; those that
        # ended are counted and listed from their folders and the study, those that were running
        # start again (as the same Optuna trials).
        pytest.param("3600", marks=pytest.mark.slow),
    ],
)
def test_sigkilled_driver_resumes_without_losing_or_repeating_trials(tmp_path: Path, snapshot_every_s: str):
    (tmp_path / "space.yaml").write_text(
        "params:\n"
        "  lr: {type: float, low: 1.0e-3, high: 3.0e-2, log: true}\n"
        "  l2: {type: float, low: 1.0e-3, high: 0.3, log: true}\n"
    )
    storage = tmp_path / "runs"
    folder = storage / "killed"
    driver = start_run(storage, env={"TUNE_GLOBAL_CHECKPOINT_S": snapshot_every_s})
    snapshots_often = snapshot_every_s == "1"
    try:
        # Kill once ASHA has judged a few trials, some trials hold a checkpoint and, with frequent
        # snapshots, Tune's last snapshot lists a running trial with one.
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            state = folder / ASHA_STATE_FILE
            rung1 = json.loads(state.read_text())["brackets"][0]["1"] if state.exists() else {}
            checkpointed = list(folder.glob("trial_*/checkpoint_*"))
            if (
                len(rung1) >= 4
                and len(checkpointed) >= 4
                and (not snapshots_often or resumable_trials(folder))
            ):
                break
            assert driver.poll() is None, driver.stdout.read()
            time.sleep(0.2)
        else:
            pytest.fail("the run never reached the point to kill it")
        os.kill(driver.pid, signal.SIGKILL)
    finally:
        driver.kill()
        driver.wait()
    before = {d.name: read_results(d) for d in folder.glob("trial_*")}
    rungs_before = json.loads((folder / ASHA_STATE_FILE).read_text())["brackets"][0]

    resumed = subprocess.run(
        [sys.executable, "-m", "tune.run", "--resume", str(folder)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    trials = pd.read_csv(folder / "trials.csv")
    # The planned number of trials is reached, each with an outcome.
    assert len(trials) == 10
    assert set(trials["outcome"]) <= {"COMPLETE", "PRUNED"}
    after = {d.name: read_results(d) for d in folder.glob("trial_*")}
    resumed_from = {}
    for name, old in before.items():
        new = after[name][len(old) :]
        if old and old[-1].get("done"):
            # A trial that had finished is not run again.
            assert not new, name
        elif new and old:
            resumed_from[name] = new[0]["epoch"]
    # Unfinished trials continued from their checkpoints (epoch > 1), not from scratch.
    assert all(epoch > 1 for epoch in resumed_from.values()), resumed_from
    assert resumed_from or not snapshots_often
    # The rung records from before the kill are still there: ASHA judged the resumed run against them.
    rungs_after = json.loads((folder / ASHA_STATE_FILE).read_text())["brackets"][0]
    for rung, recorded in rungs_before.items():
        assert recorded.items() <= rungs_after[rung].items()
    # The study: one trial per Tune trial, none left RUNNING, none duplicated.
    study = optuna.load_study(study_name="killed", storage=open_storage(str(folder / JOURNAL_FILE)))
    assert len(study.trials) == 10
    assert all(t.state.is_finished() for t in study.trials)
    ids = [t.user_attrs["ray_trial_id"] for t in study.trials]
    assert sorted(ids) == sorted(trials["trial_id"])
    # The restored sampler does not propose again what it proposed before the kill.
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 10
    # trials.csv agrees with what each trial's folder holds.
    for row in trials.itertuples():
        assert row.epochs == read_results(folder / f"trial_{row.trial_id}")[-1]["epoch"]
