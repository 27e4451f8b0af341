"""One tuning experiment: Ray Tune runs the trials, Optuna's TPE proposes them, ASHA stops them.

The data is read once here, in the driver, and reaches the trials through Ray's object store
(`tune.with_parameters`); worker processes are reused between trials (`reuse_actors`), so a
trial costs its own epochs and little else. docs/architecture.md draws the whole flow.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import optuna
import ray
from ray import tune

from mf.atomic import write_yaml
from mf.config import TrainConfig, from_dict
from mf.data import Dataset
from mf.errors import ConfigError
from mf.training import dataset_for
from search_spaces import SearchSpace
from tune._ray import fit_noting_interrupt, without_default_loggers
from tune.confirmation import (
    CONFIRM_START_S,
    Candidate,
    Confirmed,
    affordable,
    candidates,
    checkpoint_file,
    confirm,
    confirmation_seeds,
    read_reference,
    read_run,
    refit_cost,
    run_config,
    run_seconds,
    save_reference,
    save_run,
    write_summary,
)
from tune.confirmation_reserve import ConfirmationReserve
from tune.dashboard import start_dashboard
from tune.export import reference_config, reference_train_on
from tune.interrupts import Interrupted, take_sigterm
from tune.keys import EPOCH, METRIC, MODE
from tune.progress import LiveProgress, RayOutput, ray_output
from tune.ray_session import end_leftovers_in, start_private_ray
from tune.results import collect_trials
from tune.retention import CheckpointRetention
from tune.scheduler import ASHA_STATE_FILE, PersistentASHA
from tune.searcher import StudySearcher, settle_stopped_trials
from tune.settings import (
    EXPERIMENT_FILE,
    ExperimentSettings,
    RunOptions,
    epoch_ratings_for,
    read_experiment,
    recorded_settings,
)
from tune.study_storage import load_experiment_study, mend_journal, open_storage, study_location
from tune.tracking import MlflowTracking
from tune.trainable import (
    CheckpointPolicy,
    ReportPolicy,
    RunAhead,
    confirmation_run,
    reference_run,
    train_trial,
)
from tune.trial_files import trial_dirname, trial_id_of
from tune.trial_logger import TrialFolderLogger
from tune.warm_start import warm_start_trials

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
        reports=ReportPolicy(settings.decision_epochs, settings.max_epochs, every=settings.report_every),
        own_seed=settings.own_trial_seeds,
        experiment_dir=settings.experiment_dir,
    )
    return tune.with_resources(trainable, {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial})


def make_run_config(
    settings: ExperimentSettings,
    options: RunOptions,
    output: RayOutput,
    dataset: Dataset,
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
        # resume from the newest there (tune/trial_files.py); CheckpointRetention deletes the
        # ones no one needs (tune/retention.py).
        failure_config=tune.FailureConfig(max_failures=settings.max_failures),
        stop=confirmation_reserve(settings, dataset, budget_s),
        verbose=output.run_config_verbose,
    )


def confirmation_reserve(
    settings: ExperimentSettings, dataset: Dataset, budget_s: float | None
) -> ConfirmationReserve | None:
    """The stopper that ends the search once the time left of `budget_s` is what confirming its best
    will take (tune.confirmation_reserve); None without a budget or a confirmation, where the search
    may take it all (Tune's time_budget_s ends it)."""
    if budget_s is None or settings.confirm_top == 0:
        return None
    return ConfirmationReserve(
        budget_s=budget_s,
        most_s=settings.confirm_share * budget_s,
        top=settings.confirm_top,
        seeds=settings.confirm_seeds,
        slots=concurrent_trials(settings),
        max_epochs=settings.max_epochs,
        refit=settings.refit,
        refit_larger=refit_larger(dataset),
        ensemble=settings.ensemble,
    )


def refit_larger(dataset: Dataset) -> float:
    """How much larger the export's refit's training part (train + validation) is than the search's."""
    return len(dataset.training_on("train+val").train) / max(len(dataset.train), 1)


def connect_ray(settings: ExperimentSettings, output: RayOutput) -> None:
    """Join --address; inside a Ray job, the job's cluster (RAY_ADDRESS); else start a private local
    Ray, recorded in the experiment folder so that its leftovers can be ended if the driver is killed
    (tune.ray_session), after ending what earlier killed drivers beside it left.

    `ray.init()` alone would join any cluster someone started on this machine with `ray start`.
    Prints one line naming the Ray it runs on (quiet mode mutes Ray's own "Connecting to ...").
    """
    if ray.is_initialized():
        return
    if settings.address:
        ray.init(address=settings.address, **output.init_kwargs)
        which = "joined the Ray cluster at"
    elif os.environ.get("RAY_ADDRESS"):
        ray.init(**output.init_kwargs)
        which = "joined the Ray cluster at"
    else:
        end_leftovers_in(settings.experiment_dir.parent)
        start_private_ray(settings.experiment_dir, **output.init_kwargs)
        which = "started a private local Ray at"
    resources = ray.cluster_resources()
    print(
        f"ray: {which} {ray.get_runtime_context().gcs_address}: "
        f"{resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs"
    )


def concurrent_trials(settings: ExperimentSettings) -> int:
    """--max-concurrent, or as many trials as the cluster's CPUs and GPUs hold now.

    The searcher keeps no more than this many trials live, and a pending trial is what makes Tune
    start a new worker: without one, on a cluster whose workers take longer to start than a trial
    lasts, Tune keeps reusing the first few workers and leaves the rest idle.
    """
    if settings.max_concurrent:
        return settings.max_concurrent
    resources = ray.cluster_resources()
    slots = resources.get("CPU", 0) / settings.cpus_per_trial
    if settings.gpus_per_trial > 0:
        slots = min(slots, resources.get("GPU", 0) / settings.gpus_per_trial)
    return max(1, int(slots + 1e-9))


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
    tuner = tune.Tuner(
        make_trainable(settings, base, dataset),
        param_space={},
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode=MODE,
            search_alg=make_searcher(settings, space, seed=base.seed),
            scheduler=make_scheduler(settings, seed=base.seed),
            num_samples=settings.num_samples,
            max_concurrent_trials=concurrent_trials(settings),
            time_budget_s=budget_s,
            reuse_actors=True,
            trial_dirname_creator=lambda trial: trial_dirname(trial.trial_id),
        ),
        run_config=make_run_config(settings, options, output, dataset, budget_s),
    )
    return _fit(tuner, settings, base, dataset, options)


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
    dashboard = None
    if options.dashboard_port is not None:
        log = settings.experiment_dir / "dashboard.log"
        dashboard = start_dashboard(study_location_of(settings), port=options.dashboard_port, log_path=log)
    take_sigterm()  # back from ray.init's own handler
    try:
        with without_default_loggers():
            grid, interrupted = fit_noting_interrupt(tuner)
        if interrupted:  # Tune saved the state: the unfinished trials are for --resume
            raise Interrupted("the search", settings.experiment_dir)
        settle_ended_trials(settings, grid)
        run_confirmation(settings, base, dataset, deadline=deadline)
    finally:
        if dashboard is not None:
            dashboard.stop()
    return RunOutcome(settings.experiment_dir, time.monotonic() - started, deadline, dataset)


def settle_ended_trials(settings: ExperimentSettings, grid: tune.ResultGrid) -> int:
    """Tell the study about the trials Tune ended without telling the searcher (see
    `tune.searcher.settle_stopped_trials`), from their last results in the grid `Tuner.fit`
    returned (not a second read of every trial's results: 5.6 s after 2,900 trials on 2 cores).

    Only once every trial has ended: a run interrupted with Ctrl-C returns with trials that
    `--resume` goes on with, and its own end settles them."""
    if grid.num_terminated + grid.num_errors < len(grid):
        return 0
    ended = {trial_id_of(Path(r.path)): dict(r.metrics or {}) for r in grid}
    study = optuna.load_study(study_name=settings.name, storage=open_storage(study_location_of(settings)))
    return settle_stopped_trials(study, ended, max_epochs=settings.max_epochs)


def run_confirmation(
    settings: ExperimentSettings, base: TrainConfig, dataset: Dataset, *, deadline: float | None
) -> list[Confirmed]:
    """Train the best `confirm_top` configurations again with fresh seeds, and the tutorial's
    configuration once for reference, as Ray tasks on the cluster's trial slots, until done or
    `deadline` (epoch seconds) less what the export will take (reading the trials back, as this
    did, and its refit). Only as many candidates as the time left affords after CONFIRM_START_S
    are run, and where that is none but the best candidate's runs themselves fit, those are tried
    (what has not ended by the deadline is cancelled); runs a resumed experiment finished before
    are not run again. Writes `confirm/` (tune.confirmation)."""
    folder = settings.experiment_dir
    study = load_experiment_study(folder, settings.to_dict())
    read_started = time.monotonic()
    records = collect_trials(folder, max_epochs=settings.max_epochs, study=study)
    read_s = time.monotonic() - read_started  # the export reads them all again: kept for it
    chosen = candidates(records, settings.confirm_top)
    seeds = confirmation_seeds(base.seed, settings.confirm_seeds)
    by_id = {r.trial_id: r for r in records}
    costs = [run_seconds(by_id[c.trial_id], settings.max_epochs) for c in chosen]
    refit_s = refit_cost(
        costs, refit=settings.refit, larger=refit_larger(dataset), ensemble=settings.ensemble
    )
    end = None if deadline is None else deadline - refit_s - read_s  # the rest is the export's
    left = None if end is None else end - time.time() - CONFIRM_START_S
    slots = concurrent_trials(settings)
    fits = affordable(costs, seeds=len(seeds), slots=slots, seconds=left)
    if (
        fits == 0
        and end is not None
        and affordable(costs[:1], seeds=len(seeds), slots=slots, seconds=end - time.time())
    ):
        fits = 1  # the workers may start sooner than CONFIRM_START_S: a try, cut at the deadline
    if fits < len(chosen):
        print(
            f"confirmation: {len(seeds)} runs each of the top {len(chosen)} would not fit in the "
            f"{max(left or 0.0, 0.0):.0f} s left of the budget; confirming the top {fits}"
            + (" (none: the export is the search's best trial)" if fits == 0 else "")
        )
        chosen = chosen[:fits]
    started = time.monotonic()
    curves: dict[str, dict[int, dict[int, float]]] = {c.trial_id: {} for c in chosen}
    pending: dict[ray.ObjectRef, tuple[Candidate, int] | None] = {}
    try:
        failed = _run_tasks(settings, base, dataset, chosen, seeds, curves, pending, end=end)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the runs that ended are saved, one file each
        raise Interrupted("the confirmation", folder) from None
    finally:  # out of time, or interrupted: what has not ended is cancelled
        for ref in pending:
            ray.cancel(ref, force=True)
    results = [
        r
        for c in chosen
        if len(curves[c.trial_id]) == len(seeds) and (r := confirm(c, curves[c.trial_id])) is not None
    ]
    if failed:
        print(
            f"confirmation: {failed} run{'s' * (failed > 1)} failed (above); a configuration missing a run is "
            "not confirmed"
        )
    unfinished = sum(job is not None for job in pending.values())
    if unfinished:
        print(
            f"confirmation: {unfinished} of {len(chosen) * len(seeds)} runs did not finish within the budget; "
            f"{len(results)} of {len(chosen)} configurations confirmed"
        )
    if None in pending.values():
        print("confirmation: the tutorial's reference run did not finish within the budget")
    write_summary(folder, results, planned=len(chosen) * len(seeds), seconds=time.monotonic() - started)
    return results


def _run_tasks(
    settings: ExperimentSettings,
    base: TrainConfig,
    dataset: Dataset,
    chosen: list[Candidate],
    seeds: list[int],
    curves: dict[str, dict[int, dict[int, float]]],
    pending: dict[ray.ObjectRef, tuple[Candidate, int] | None],
    *,
    end: float | None,
) -> int:
    """The confirmation's runs and the tutorial's reference as Ray tasks, until all have ended or
    `end`: each run's curve into `curves` and its file; what has not ended stays in `pending`.
    A task that fails (a crashed or killed worker, a lost node, an error) is reported and skipped;
    returns how many did."""
    folder = settings.experiment_dir
    threads = max(1, int(settings.cpus_per_trial))
    resources = {"num_cpus": settings.cpus_per_trial, "num_gpus": settings.gpus_per_trial}
    data = ray.put(dataset)
    confirm_task = ray.remote(**resources)(confirmation_run)
    for c in chosen:
        for seed in seeds:
            done = read_run(folder, c.trial_id, seed)
            if done is not None:
                curves[c.trial_id][seed] = done
                continue
            config = run_config(base, c, seed=seed, max_epochs=settings.max_epochs)
            keep = str(checkpoint_file(folder, c.trial_id, seed)) if seed == seeds[0] else None
            pending[confirm_task.remote(config, data, threads, keep)] = (c, seed)
    reference_on = reference_train_on(settings.refit, dataset)
    if read_reference(folder, reference_config(base, train_on=reference_on).to_dict()) is None:
        reference = ray.remote(**resources)(reference_run)
        pending[reference.remote(base, data, threads, reference_on)] = None  # last in line
    failed = 0
    while pending:
        timeout = None if end is None else max(0.0, end - time.time())
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=timeout)
        if not ready:
            break  # out of time: the candidates with every seed run are judged, the others dropped
        job = pending.pop(ready[0])
        try:
            value = ray.get(ready[0])
        except ray.exceptions.RayError as e:
            what = (
                "the tutorial's reference run"
                if job is None
                else f"trial {job[0].trial_id}'s run with seed {job[1]}"
            )
            reason = (str(e).strip().splitlines() or [""])[-1][:200]
            print(f"confirmation: {what} failed ({type(e).__name__}: {reason}); skipped")
            failed += 1
            continue
        if job is None:
            save_reference(folder, *value)
            continue
        c, seed = job
        curves[c.trial_id][seed] = value
        save_run(folder, c, seed, value)
    return failed
