"""One tuning experiment: Ray Tune runs the trials, Optuna's TPE proposes them, ASHA stops them.

The data is read once here, in the driver, and reaches the trials through Ray's object store
(`tune.with_parameters`); worker processes are reused between trials (`reuse_actors`), so a
trial costs its own epochs and little else. docs/architecture.md draws the whole flow.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from ray import tune

from mf.atomic import write_yaml
from mf.config import TrainConfig, from_dict
from mf.data import Dataset
from mf.errors import ConfigError
from mf.training import dataset_for
from search_spaces import SearchSpace
from tune._internals.ray import fit_noting_interrupt, without_default_loggers
from tune.extras.dashboard import start_dashboard
from tune.extras.progress import LiveProgress, ray_output
from tune.extras.tracking import MlflowTracking
from tune.record.keys import EPOCH, METRIC, MODE
from tune.record.study import load_experiment_study, mend_journal, open_storage, study_location
from tune.record.trial_files import trial_dirname, trial_id_of
from tune.search.cluster import concurrent_trials, connect_ray
from tune.search.confirming import confirmation_reserve, run_confirmation
from tune.search.interrupts import Interrupted, take_sigterm
from tune.search.retention import CheckpointRetention
from tune.search.scheduler import ASHA_STATE_FILE, PersistentASHA
from tune.search.searcher import StudySearcher, settle_stopped_trials
from tune.search.trainable import CheckpointPolicy, RunAhead, train_trial
from tune.search.trial_logger import TrialFolderLogger
from tune.search.warm_start import warm_start_trials
from tune.settings import (
    EXPERIMENT_FILE,
    ExperimentSettings,
    RunOptions,
    epoch_ratings_for,
    read_experiment,
    recorded_settings,
)

QUIET = RunOptions()


def study_location_of(settings: ExperimentSettings) -> str:
    return study_location(settings.experiment_dir, settings.study_storage)


def create_study(settings: ExperimentSettings, space: SearchSpace) -> optuna.Study:
    """The new experiment's study (refused if one of that name exists), seeded by --warm-start."""
    storage = open_storage(study_location_of(settings), writer=True)
    if settings.name in {s.study_name for s in optuna.get_all_study_summaries(storage)}:
        raise ConfigError(
            f"--name: the study {settings.name!r} already exists in {study_location_of(settings)}; "
            "pick another --name, or --resume the experiment"
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created" line
    study = optuna.create_study(study_name=settings.name, storage=storage, direction="minimize")
    if settings.warm_start:
        trials = warm_start_trials(settings.warm_start, space)
        study.add_trials(trials)
        print(f"warm start: {len(trials)} finished trials from {settings.warm_start}")
    return study


def make_searcher(settings: ExperimentSettings, space: SearchSpace, *, seed: int) -> StudySearcher:
    return StudySearcher(
        space=space.to_optuna(),
        study_location=study_location_of(settings),
        study_name=settings.name,
        seed=seed,  # the config's --seed: one seed for the run
        max_epochs=settings.max_epochs,
        num_samples=settings.num_samples,
        n_startup_trials=settings.startup_trials,
    )


def make_scheduler(settings: ExperimentSettings, *, seed: int) -> PersistentASHA:
    return PersistentASHA(
        state_path=settings.experiment_dir / ASHA_STATE_FILE,
        seed=seed,
        time_attr=EPOCH,  # not training_iteration, which restarts when a trial is restored
        max_t=settings.max_epochs,
        grace_period=settings.grace_period,
        reduction_factor=settings.reduction_factor,
        brackets=settings.brackets,
    )


def make_trainable(settings: ExperimentSettings, base: TrainConfig, dataset: Dataset):
    trainable = tune.with_parameters(
        train_trial,
        data=dataset,
        base=base,
        max_epochs=settings.max_epochs,
        checkpoints=CheckpointPolicy(
            epochs=settings.decision_epochs,
            every=settings.checkpoint_every,
            interval_s=settings.checkpoint_interval_s,
        ),
        run_ahead=RunAhead(settings.decision_epochs),
        own_seed=settings.own_trial_seeds,
        experiment_dir=settings.experiment_dir,
    )
    return tune.with_resources(trainable, {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial})


def make_run_config(
    settings: ExperimentSettings,
    options: RunOptions,
    dataset: Dataset | None,
    budget_s: float | None = None,
) -> tune.RunConfig:
    """Tune's RunConfig for the experiment; `budget_s`: what is left of --time-budget-s for the
    search, its confirmation and its export (None: no budget)."""
    callbacks: list[tune.Callback] = [
        TrialFolderLogger(),
        CheckpointRetention(metric=METRIC, mode=MODE, keep_best=settings.keep_checkpoints),
    ]
    if options.mlflow_uri is not None:
        callbacks.append(
            MlflowTracking(
                settings.experiment_dir,
                experiment_name=settings.name,
                max_epochs=settings.max_epochs,
                tracking_uri=options.mlflow_uri or None,
                params=settings.to_dict(),
            )
        )
    callbacks.extend(options.callbacks)
    # Last, so that the line is drawn after every other callback has seen the step.
    callbacks.append(
        LiveProgress(
            max_epochs=settings.max_epochs,
            time_budget_s=budget_s,
            tty=False if options.verbose else None,
        )
    )
    return tune.RunConfig(
        callbacks=callbacks,
        name=settings.name,
        storage_path=str(settings.experiment_dir.parent),
        # No checkpoint_config: trials save their checkpoints into their folders themselves and
        # resume from the newest there (tune/record/trial_files.py); CheckpointRetention deletes the
        # ones no one needs (tune/search/retention.py).
        failure_config=tune.FailureConfig(max_failures=settings.max_failures),
        stop=confirmation_reserve(settings, dataset, budget_s),
        verbose=ray_output(verbose=options.verbose).run_config_verbose,
    )


@dataclass(frozen=True)
class RunOutcome:
    """What a search left for its export: where it is, how long the search took, its budget's end
    and the split it trained on."""

    experiment_dir: Path
    seconds: float
    """The search's and the confirmation's wall-clock seconds."""
    deadline: float | None = None
    """The end of --time-budget-s (epoch seconds), which the export's refit must also fit in."""
    dataset: Dataset | None = None
    """The split the driver loaded, for the export: loading a large data set again spends the budget."""


def write_experiment_file(settings: ExperimentSettings, base: TrainConfig, space: SearchSpace) -> None:
    write_yaml(
        settings.experiment_dir / EXPERIMENT_FILE,
        {"settings": settings.to_dict(), "base_config": base.to_dict(), "space": space.to_dict()},
    )


def run_experiment(
    settings: ExperimentSettings, base: TrainConfig, space: SearchSpace, options: RunOptions = QUIET
) -> RunOutcome:
    """Run a new experiment to the end (its trials done, or its budget spent: Ctrl-C or SIGTERM ends
    it early, resumable), then confirm its best configurations with fresh seeds. Connects to the
    Ray cluster of `settings.address`, or starts a local Ray. Exporting is the caller's next step
    (`tune.export_best`).

    Args:
        settings: how the experiment runs; its folder `settings.experiment_dir` must not hold one.
        base: the training config every trial starts from (`experiment_config` builds it as
            tune.run does); the keys `space` tunes are each trial's own.
        space: the search space (`search_spaces.load_space`).
        options: how the run shows itself (progress line, dashboard, MLflow) and when its budget
            began.

    Returns:
        The outcome, for the export.

    Raises:
        ConfigError: the folder already holds an experiment, or settings, data or storage are
            refused.
        DataError: the data cannot be read.
    """
    folder = settings.experiment_dir
    if (folder / EXPERIMENT_FILE).exists():
        raise ConfigError(f"--name: {folder} already holds an experiment; pick another --name or --resume it")
    output = ray_output(verbose=options.verbose)
    dataset = dataset_for(base)
    if base.epoch_ratings == 0:
        base = base.replace(epoch_ratings=epoch_ratings_for(len(dataset.train)))
    connect_ray(settings, output)
    folder.mkdir(parents=True, exist_ok=True)
    create_study(settings, space)
    write_experiment_file(settings, base, space)
    budget_s = budget_left(settings, options)
    trainable = make_trainable(settings, base, dataset)
    tuner = build_tuner(
        settings, trainable, space, seed=base.seed, options=options, dataset=dataset, budget_s=budget_s
    )
    return _fit(tuner, settings, base, dataset, options)


def build_tuner(
    settings: ExperimentSettings,
    trainable: Any,
    space: SearchSpace,
    *,
    seed: int,
    options: RunOptions = QUIET,
    dataset: Dataset | None,
    budget_s: float | None,
) -> tune.Tuner:
    """The experiment's Tuner: `trainable` with the searcher on the experiment's study (which
    `create_study` made), ASHA, the callbacks and `budget_s` (what is left of --time-budget-s).

    Args:
        settings: the experiment's settings.
        trainable: `make_trainable`'s, or a stand-in with its resources (bench.driver's sleeping
            trials measure the driver with this wiring).
        space: the search space.
        seed: the searcher's and ASHA's seed (the base config's).
        options: how the run shows itself.
        dataset: the split, for the confirmation's reserve (None only with `confirm_top` 0).
        budget_s: seconds left for the search, its confirmation and export (None: no budget).
    """
    return tune.Tuner(
        trainable,
        param_space={},
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode=MODE,
            search_alg=make_searcher(settings, space, seed=seed),
            scheduler=make_scheduler(settings, seed=seed),
            num_samples=settings.num_samples,
            max_concurrent_trials=concurrent_trials(settings),
            time_budget_s=budget_s,
            reuse_actors=True,
            trial_dirname_creator=lambda trial: trial_dirname(trial.trial_id),
        ),
        run_config=make_run_config(settings, options, dataset, budget_s),
    )


def budget_left(settings: ExperimentSettings, options: RunOptions) -> float | None:
    """What is left of --time-budget-s now, counted from `options.started` (None: no budget)."""
    if settings.time_budget_s is None:
        return None
    spent = 0.0 if options.started is None else time.time() - options.started
    return max(settings.time_budget_s - spent, 1.0)


def resume_experiment(folder: Path, *, address: str | None = None, options: RunOptions = QUIET) -> RunOutcome:
    """Continue an experiment whose driver died or was stopped: finished trials stay, unfinished
    ones resume from their checkpoints, and the searcher, the study and ASHA's rungs carry on where
    they were saved; then the confirmation, as `run_experiment`.

    Args:
        folder: the experiment folder, where it ran.
        address: a Ray cluster to run on instead of the recorded one.
        options: as `run_experiment`'s.

    Returns:
        The outcome, for the export.

    Raises:
        ConfigError: `folder` holds no resumable experiment (no experiment.yaml or Tune state, a
            damaged study, or a folder moved from where it ran).
    """
    experiment = read_experiment(folder)
    settings = recorded_settings(experiment)
    if address:
        settings = replace(settings, address=address)
    # Before Tune unpickles the searcher, which appends to the study: a last line cut short by a kill
    # is cut off, and a study damaged before it is refused in one line.
    mend_journal(study_location(folder, settings.study_storage))
    load_experiment_study(folder, settings.to_dict(), strict=True)
    if settings.experiment_dir != folder.resolve():
        raise ConfigError(
            f"--resume: {folder} was moved from {settings.experiment_dir}; resume it where it ran"
        )
    if not tune.Tuner.can_restore(str(folder)):
        raise ConfigError(f"--resume: {folder} holds no Tune experiment state to resume from")
    base = from_dict(experiment["base_config"], where=f"{folder / EXPERIMENT_FILE} (base_config)")
    dataset = dataset_for(base)
    connect_ray(settings, ray_output(verbose=options.verbose))
    tuner = tune.Tuner.restore(
        str(folder),
        trainable=make_trainable(settings, base, dataset),
        resume_unfinished=True,
        resume_errored=True,
    )
    return _fit(tuner, settings, base, dataset, options)


def _fit(
    tuner: tune.Tuner, settings: ExperimentSettings, base: TrainConfig, dataset: Dataset, options: RunOptions
) -> RunOutcome:
    started = time.monotonic()
    left = budget_left(settings, options)
    deadline = None if left is None else time.time() + left
    # At the end Tune reads the experiment back and warns about every trial that has no results
    # (one the budget stopped before its first epoch), which is no news here.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    dashboard: Any = contextlib.nullcontext()
    if options.dashboard_port is not None:
        log = settings.experiment_dir / "dashboard.log"
        dashboard = start_dashboard(study_location_of(settings), port=options.dashboard_port, log_path=log)
    take_sigterm()  # back from ray.init's own handler
    with dashboard:  # leaving it ends the dashboard's server
        with without_default_loggers():
            grid, interrupted = fit_noting_interrupt(tuner)
        if interrupted:  # Tune saved the state: the unfinished trials are for --resume
            raise Interrupted("the search", settings.experiment_dir)
        settle_ended_trials(settings, grid)
        run_confirmation(settings, base, dataset, deadline=deadline)
    return RunOutcome(settings.experiment_dir, time.monotonic() - started, deadline, dataset)


def settle_ended_trials(settings: ExperimentSettings, grid: tune.ResultGrid) -> int:
    """Tell the study about the trials Tune ended without telling the searcher (see
    `tune.search.searcher.settle_stopped_trials`), from their last results in the grid `Tuner.fit`
    returned (not a second read of every trial's results: 5.6 s after 2,900 trials on 2 cores).

    Only once every trial has ended: a run interrupted with Ctrl-C returns with trials that
    `--resume` goes on with, and its own end settles them."""
    if grid.num_terminated + grid.num_errors < len(grid):
        return 0
    ended = {trial_id_of(Path(r.path)): dict(r.metrics or {}) for r in grid}
    study = optuna.load_study(study_name=settings.name, storage=open_storage(study_location_of(settings)))
    return settle_stopped_trials(study, ended, max_epochs=settings.max_epochs)
