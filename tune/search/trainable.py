"""The Ray Tune trainable: a thin function that drives `mf.training.Trainer` one epoch at a time.

It builds the trainer from the experiment's base config plus the trial's sampled parameters,
resumes from the newest checkpoint in its trial folder when Tune retries or restores it, and
reports every epoch (what ASHA and the Optuna searcher act on), and saves a checkpoint into its
folder where `CheckpointPolicy` says. Between ASHA's rungs it
trains the next epoch while the driver handles the last report (`RunAhead`).
"""

from __future__ import annotations

import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from mf.config import TrainConfig
from mf.data import Dataset
from mf.training import Trainer, TrainingDiverged
from tune.record.keys import (
    ALREADY_LOGGED,
    DEVICE,
    DIVERGED,
    EPOCH,
    EPOCH_SECONDS,
    ERROR,
    GPU_IDS,
    NODE_ID,
    OWN_RESULT_KEYS,
    RAN_AHEAD,
    TRAIN_LOSS,
    VAL_MSE,
    WALL_TIME,
)
from tune.record.trial_files import (
    has_ended,
    newest_checkpoint,
    read_results,
    save_trial_checkpoint,
    trial_dirname,
)
from tune.settings import trial_config


@dataclass(frozen=True)
class CheckpointPolicy:
    """When a trial saves a checkpoint.

    Always at the epochs where ASHA may stop it (its rungs) and at its last epoch, so a stopped
    or finished trial's final checkpoint holds its best weights; in between every `every` epochs,
    or (every=0) once `interval_s` of training has passed since the last one. On a fast trainer a
    checkpoint costs more than an epoch, and a retry loses at most that much training.
    """

    epochs: frozenset[int]
    every: int = 0
    interval_s: float = 20.0

    def due(self, epoch: int, seconds_since_last: float) -> bool:
        if epoch in self.epochs:
            return True
        if self.every > 0:
            return epoch % self.every == 0
        return seconds_since_last >= self.interval_s


@dataclass(frozen=True)
class RunAhead:
    """When a trial trains its next epoch while the driver handles the last epoch's report.

    `tune.report` blocks the trial until the driver has handled the result (loggers, ASHA, the
    Optuna study) and asks for the next one: with epochs of tens of milliseconds, that wait is a
    large share of a worker's time. ASHA lets a trial go on after any epoch that is
    not one of its `decision_epochs`, so the next epoch is trained in the meantime; it is the
    same epoch, with the same result, that the trial would train after the wait. After a
    decision epoch the trial waits, so a trial that ASHA stops trains nothing more. Only epochs
    shorter than `max_epoch_s` run ahead: the wait matters only for them, and a trial that Tune
    stops otherwise (the time budget) must end within the 2 s Tune gives a reused worker.
    """

    decision_epochs: frozenset[int]
    max_epoch_s: float = 1.0

    def allowed(self, epoch: int, epoch_seconds: float) -> bool:
        """May the epoch after `epoch` (which took `epoch_seconds`) start before its report is handled?"""
        return epoch not in self.decision_epochs and epoch_seconds < self.max_epoch_s


def train_trial(
    params: dict[str, Any],
    *,
    data: Dataset,
    base: TrainConfig,
    max_epochs: int,
    checkpoints: CheckpointPolicy,
    run_ahead: RunAhead,
    experiment_dir: Path,
    own_seed: bool = False,
) -> None:
    """One trial, as Ray Tune's function trainable (bound with `tune.with_parameters`): train the
    configuration `tune.settings.trial_config` makes of `base` and the sampled `params` (its own
    seed with `own_seed`) on `data`, and report each epoch's metrics to Tune until its last epoch
    (its own tuned `epochs`, at most `max_epochs`) or until ASHA stops it.

    What it did before survives a retry or a driver restart: it reads its folder under
    `experiment_dir` first, resends the last result of a trial that had ended, and resumes an
    unfinished one from its newest checkpoint. It writes checkpoints into that folder as
    `checkpoints` says (at ASHA's rungs, and at least every so often), reports every epoch, and
    trains its next epoch while the driver decides on one it cannot act on (`run_ahead`). A diverging configuration ends this trial with a `diverged`
    result, not the experiment. Returns nothing; raises what training raises otherwise, which
    Tune records as the trial's error."""
    trial_dir = experiment_dir / trial_dirname(tune.get_context().get_trial_id())
    # What the trial did before a retry or a driver restart, read from its folder: Tune's snapshot
    # of the experiment (and so `tune.get_checkpoint()`) may be older than that.
    reported = read_results(trial_dir)
    if reported and has_ended(reported[-1]):
        # It ended before the driver restarted from a snapshot that missed that: send the last
        # result again (not logged twice) so that Tune's record of the trial ends as it did.
        last = {k: v for k, v in reported[-1].items() if k in OWN_RESULT_KEYS}
        tune.report({**last, ALREADY_LOGGED: 1})
        return
    config = trial_config(base, params, max_epochs, own_seed=own_seed)
    threads = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    torch.set_num_threads(threads)  # match torch to the CPUs this trial holds
    trainer = Trainer(config, data)
    state = newest_checkpoint(trial_dir)
    if state is not None:
        trainer.load_state(state, source=f"{trial_dir} checkpoint")
    # Where the trial ran: its node, device and GPU share (trials.csv and the tests read these).
    placement = {
        NODE_ID: ray.get_runtime_context().get_node_id(),
        DEVICE: str(trainer.device),
        GPU_IDS: ",".join(str(g) for g in ray.get_gpu_ids()),
    }
    last_saved = time.monotonic()
    last_reported = max((int(r.get(EPOCH, 0)) for r in reported), default=0)
    if trainer.history and trainer.epoch > last_reported:
        # The checkpoint is newer than any result the driver logged (it died in between): report
        # those epochs now, so that ASHA and the searcher see them before any further epoch.
        for h in trainer.history:
            if int(h[EPOCH]) > last_reported:
                replayed = {k: v for k, v in h.items() if k != EPOCH_SECONDS}
                tune.report({**replayed, **placement, WALL_TIME: time.time(), DIVERGED: 0})

    # Epochs run on this one thread, so that the next can start while tune.report waits.
    with ThreadPoolExecutor(1, "epoch", initializer=torch.set_num_threads, initargs=(threads,)) as pool:
        ahead: Future | None = None
        while trainer.epoch < config.epochs or ahead is not None:
            ran_ahead = ahead is not None
            try:
                metrics: dict[str, Any] = (ahead or pool.submit(trainer.run_epoch)).result()
            except TrainingDiverged as e:
                # Deterministic: a retry would diverge again, so end the trial here and mark it failed.
                failed = {EPOCH: trainer.epoch, VAL_MSE: math.inf, TRAIN_LOSS: math.nan, DIVERGED: 1}
                tune.report({**failed, ERROR: str(e), **placement, WALL_TIME: time.time()})
                return
            ahead = None
            epoch = trainer.epoch
            metrics.update(placement)
            metrics[WALL_TIME] = time.time()
            metrics[DIVERGED] = 0
            metrics[RAN_AHEAD] = int(ran_ahead)
            if checkpoints.due(epoch, time.monotonic() - last_saved) or epoch >= config.epochs:
                # Saved before the next epoch starts changing the weights.
                save_trial_checkpoint(trainer, trial_dir)
                last_saved = time.monotonic()
            if epoch < config.epochs and run_ahead.allowed(epoch, metrics[EPOCH_SECONDS]):
                ahead = pool.submit(trainer.run_epoch)
            # If Tune stops the trial here, leaving the `with` waits for the epoch in flight.
            tune.report(metrics)


def confirmation_run(
    config: TrainConfig, data: Dataset, threads: int, checkpoint: str | None
) -> dict[int, float]:
    """One confirmation run (a Ray task, see tune.export.confirmation): train `config.epochs` epochs and
    return epoch -> val MSE (a run that diverges returns the epochs before it); with `checkpoint`,
    save the run there (its best epoch's weights inside), for the export to take."""
    torch.set_num_threads(max(1, threads))
    trainer = Trainer(config, data)
    curve: dict[int, float] = {}
    try:
        while trainer.epoch < config.epochs:
            metrics = trainer.run_epoch()
            curve[int(metrics[EPOCH])] = float(metrics[VAL_MSE])
    except TrainingDiverged:
        return curve
    if checkpoint is not None:
        trainer.save_checkpoint(checkpoint, fsync=False)
    return curve


def reference_run(
    base: TrainConfig, data: Dataset, threads: int, train_on: str = "train"
) -> tuple[dict[str, Any], dict[str, float]]:
    """The tutorial's configuration on the experiment's split, trained on `train_on` (a Ray task
    beside the confirmation): its config and held-out metrics, as tune.export reports them."""
    from tune.export.models import tutorial_metrics

    torch.set_num_threads(max(1, threads))
    config, metrics = tutorial_metrics(base.to_dict(), data, train_on=train_on)
    return config.to_dict(), metrics
