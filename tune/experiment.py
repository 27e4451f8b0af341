"""One tuning experiment: Ray Tune runs the trials, Optuna's TPE proposes them, ASHA stops them.

The data is read once here, in the driver, and reaches the trials through Ray's object store
(`tune.with_parameters`); worker processes are reused between trials (`reuse_actors`), so a
trial costs its own epochs and little else.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import ray
from ray import tune

from mf.atomic import write_yaml
from mf.config import TrainConfig, from_dict
from mf.data import Dataset
from mf.errors import ConfigError
from mf.metrics import EPOCH, VAL_MSE
from mf.training import dataset_for
from search_spaces import SearchSpace
from tune.results import load_analysis
from tune.retention import CheckpointRetention
from tune.scheduler import ASHA_STATE_FILE, PersistentASHA
from tune.searcher import RAY_TRIAL_ID, WARM_START_FROM, TruthfulOptunaSearch, outcome_of_curve
from tune.settings import EXPERIMENT_FILE, ExperimentSettings, read_experiment
from tune.study_storage import (
    JOURNAL_FILE,
    SQLITE_FILE,
    exists,
    is_url,
    mend_journal,
    open_storage,
    study_location,
)
from tune.trainable import CheckpointPolicy, RunAhead, train_trial
from tune.trial_files import TrialFolderLogger, trial_dirname

METRIC, MODE = VAL_MSE, "min"  # stated once, here


def study_location_of(settings: ExperimentSettings) -> str:
    return study_location(settings.experiment_dir, settings.study_storage)


def warm_start_trials(
    source: str, study_name: str | None, space: SearchSpace
) -> list[optuna.trial.FrozenTrial]:
    """Finished trials of an earlier study (an experiment folder, a journal file or a storage URL)
    that fit `space`."""
    # A storage URL or a journal file as given; an experiment folder's own study.
    location = source if is_url(source) or Path(source).is_file() else study_location(Path(source).resolve())
    if not exists(location):
        raise ConfigError(
            f"--warm-start: {source!r} holds no Optuna study ({JOURNAL_FILE} or {SQLITE_FILE}); give an "
            "experiment folder, a journal file or a storage URL"
        )
    storage = open_storage(location)
    summaries = optuna.get_all_study_summaries(storage)
    if study_name is None:
        if len(summaries) != 1:
            names = ", ".join(s.study_name for s in summaries) or "none"
            raise ConfigError(f"--warm-start: {source!r} holds studies {names}; name one as URL#study")
        study_name = summaries[0].study_name
    old = optuna.load_study(study_name=study_name, storage=storage)
    distributions = space.to_optuna()
    keep = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    trials = []
    for t in old.get_trials(deepcopy=False, states=keep):
        if set(t.params) != set(distributions) or not all(
            distributions[k]._contains(distributions[k].to_internal_repr(v)) for k, v in t.params.items()
        ):
            continue
        trials.append(
            optuna.trial.create_trial(
                state=t.state,
                value=t.value,
                params=t.params,
                distributions=distributions,
                intermediate_values=t.intermediate_values,
                user_attrs={
                    **{k: v for k, v in t.user_attrs.items() if k != RAY_TRIAL_ID},  # not a trial of this run
                    WARM_START_FROM: f"{source}#{study_name}:{t.number}",
                },
            )
        )
    return trials


def make_searcher(
    settings: ExperimentSettings, space: SearchSpace, *, seed: int, resume: bool
) -> TruthfulOptunaSearch:
    storage = open_storage(study_location_of(settings), writer=True)
    existing = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    if settings.name in existing and not resume:
        raise ConfigError(
            f"--name: the study {settings.name!r} already exists in {study_location_of(settings)}; "
            "pick another --name, or --resume the experiment"
        )
    searcher = TruthfulOptunaSearch(
        space=space.to_optuna(),
        sampler=optuna.samplers.TPESampler(seed=seed),  # the config's --seed: one seed for the run
        storage=storage,
        study_name=settings.name,
        metric=METRIC,  # with a space given up front, Tune does not pass TuneConfig's metric/mode on
        mode=MODE,
        max_epochs=settings.max_epochs,
        num_samples=settings.num_samples,
    )
    if settings.warm_start and not resume:
        source, _, name = settings.warm_start.partition("#")
        trials = warm_start_trials(source, name or None, space)
        searcher.study.add_trials(trials)
        print(f"warm start: {len(trials)} finished trials from {settings.warm_start}")
    return searcher


def make_scheduler(settings: ExperimentSettings) -> PersistentASHA:
    return PersistentASHA(
        state_path=settings.experiment_dir / ASHA_STATE_FILE,
        time_attr=EPOCH,  # not training_iteration, which restarts when a trial is restored
        max_t=settings.max_epochs,
        grace_period=settings.grace_period,
        reduction_factor=settings.reduction_factor,
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
        experiment_dir=settings.experiment_dir,
    )
    return tune.with_resources(trainable, {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial})


def make_run_config(settings: ExperimentSettings, *, verbose: int) -> tune.RunConfig:
    # Tune's default loggers also write progress.csv and a TensorBoard file for every result; the
    # TensorBoard writer alone took an eighth of the driver's time (py-spy). result.json is what
    # ExperimentAnalysis, the export and the report read; TrialFolderLogger writes it straight into
    # the experiment folder (Tune's JSON logger stages it and copies every trial's file at each
    # snapshot of the experiment).
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    return tune.RunConfig(
        callbacks=[
            TrialFolderLogger(),
            CheckpointRetention(metric=METRIC, mode=MODE, keep_best=settings.keep_checkpoints),
        ],
        name=settings.name,
        storage_path=str(settings.experiment_dir.parent),
        # No checkpoint_config: trials save their checkpoints into their folders themselves and
        # resume from the newest there (tune/trial_files.py); CheckpointRetention deletes the
        # ones no one needs (tune/retention.py).
        failure_config=tune.FailureConfig(max_failures=settings.max_failures),
        verbose=verbose,
    )


def connect_ray(settings: ExperimentSettings) -> None:
    """Join --address; inside a Ray job, the job's cluster (RAY_ADDRESS); else start a private local Ray.

    `ray.init()` alone would join any cluster someone started on this machine with `ray start`.
    """
    if ray.is_initialized():
        return
    if settings.address:
        ray.init(address=settings.address)
    elif os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        ray.init(address="local", include_dashboard=False)


def concurrent_trials(settings: ExperimentSettings) -> int:
    """--max-concurrent, or as many trials as the cluster's CPUs and GPUs hold now.

    Tune lets a custom searcher keep only this many trials pending (otherwise 1), and a pending
    trial is what makes it start a new worker: without it, on a cluster whose workers take longer
    to start than a trial lasts, Tune keeps reusing the first few workers and leaves the rest idle.
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
    experiment_dir: Path
    seconds: float
    results: tune.ResultGrid


def write_experiment_file(settings: ExperimentSettings, base: TrainConfig, space: SearchSpace) -> None:
    write_yaml(
        settings.experiment_dir / EXPERIMENT_FILE,
        {"settings": settings.to_dict(), "base_config": base.to_dict(), "space": space.to_dict()},
    )


def run_experiment(
    settings: ExperimentSettings,
    base: TrainConfig,
    space: SearchSpace,
    *,
    verbose: int = 1,
) -> RunOutcome:
    """Run a new experiment to the end (trials done or budget spent) and return Tune's results."""
    folder = settings.experiment_dir
    if (folder / EXPERIMENT_FILE).exists():
        raise ConfigError(f"--name: {folder} already holds an experiment; pick another --name or --resume it")
    dataset = dataset_for(base)
    connect_ray(settings)
    folder.mkdir(parents=True, exist_ok=True)
    searcher = make_searcher(settings, space, seed=base.seed, resume=False)
    write_experiment_file(settings, base, space)
    tuner = tune.Tuner(
        make_trainable(settings, base, dataset),
        param_space={},
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode=MODE,
            search_alg=searcher,
            scheduler=make_scheduler(settings),
            num_samples=settings.num_samples,
            max_concurrent_trials=concurrent_trials(settings),
            time_budget_s=settings.time_budget_s,
            reuse_actors=True,
            trial_dirname_creator=lambda trial: trial_dirname(trial.trial_id),
        ),
        run_config=make_run_config(settings, verbose=verbose),
    )
    started = time.monotonic()
    results = tuner.fit()
    settle_stopped_trials(settings)
    return RunOutcome(folder, time.monotonic() - started, results)


def settle_stopped_trials(settings: ExperimentSettings) -> int:
    """Tell Optuna about trials Tune stopped without telling the searcher (those still running when
    --time-budget-s ran out): their last result joins their curve, then PRUNED, COMPLETE if they had
    reached max_epochs, FAIL with no epoch. Trials Tune will still resume (an interrupted run) stay RUNNING."""
    last_results = {
        t.trial_id: t.last_result or {}
        for t in load_analysis(settings.experiment_dir).trials
        if t.status in ("TERMINATED", "ERROR")
    }
    study = optuna.load_study(study_name=settings.name, storage=open_storage(study_location_of(settings)))
    settled = 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        last = last_results.get(t.user_attrs.get(RAY_TRIAL_ID))
        if last is None:
            continue
        epoch, value = last.get(EPOCH), last.get(METRIC)
        if (
            epoch is not None
            and value is not None
            and math.isfinite(value)
            and int(epoch) not in t.intermediate_values
        ):
            optuna.Trial(study, t._trial_id).report(float(value), int(epoch))
        curve = study._storage.get_trial(t._trial_id).intermediate_values
        state, best = outcome_of_curve(curve, failed=False, max_epochs=settings.max_epochs, mode=MODE)
        study.tell(t.number, best, state=state)
        settled += 1
    return settled


def resume_experiment(folder: Path, *, address: str | None = None, verbose: int = 1) -> RunOutcome:
    """Continue an experiment whose driver died: finished trials stay, unfinished ones resume from
    their checkpoints, the searcher, the study and ASHA's rungs carry on where they were saved."""
    experiment = read_experiment(folder)
    settings = ExperimentSettings(**{**experiment["settings"], **({"address": address} if address else {})})
    if settings.experiment_dir != folder.resolve():
        raise ConfigError(
            f"--resume: {folder} was moved from {settings.experiment_dir}; resume it where it ran"
        )
    if not tune.Tuner.can_restore(str(folder)):
        raise ConfigError(f"--resume: {folder} holds no Tune experiment state to resume from")
    base = from_dict(experiment["base_config"], where=f"{folder / EXPERIMENT_FILE} (base_config)")
    dataset = dataset_for(base)
    connect_ray(settings)
    mend_journal(study_location_of(settings))
    tuner = tune.Tuner.restore(
        str(folder),
        trainable=make_trainable(settings, base, dataset),
        resume_unfinished=True,
        resume_errored=True,
    )
    started = time.monotonic()
    results = tuner.fit()
    settle_stopped_trials(settings)
    return RunOutcome(folder, time.monotonic() - started, results)
