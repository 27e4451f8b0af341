"""The confirmation's runs on the cluster: the best configurations trained again with fresh seeds
as Ray tasks, within the budget the search left them (tune.export.confirmation picks the winner)."""

from __future__ import annotations

import time

import ray

from mf.config import TrainConfig
from mf.data import Dataset
from tune.export.confirmation import (
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
from tune.export.models import reference_config, reference_train_on
from tune.record.results import collect_trials
from tune.record.study import load_experiment_study
from tune.search.cluster import concurrent_trials
from tune.search.interrupts import Interrupted
from tune.search.reserve import ConfirmationReserve
from tune.search.trainable import confirmation_run, reference_run
from tune.settings import ExperimentSettings


def confirmation_reserve(
    settings: ExperimentSettings, dataset: Dataset, budget_s: float | None
) -> ConfirmationReserve | None:
    """The stopper that ends the search once the time left of `budget_s` is what confirming its best
    will take (tune.search.reserve); None without a budget or a confirmation, where the search
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


def run_confirmation(
    settings: ExperimentSettings, base: TrainConfig, dataset: Dataset, *, deadline: float | None
) -> list[Confirmed]:
    """Train the best `confirm_top` configurations again with fresh seeds, and the tutorial's
    configuration once for reference, as Ray tasks on the cluster's trial slots, until done or
    `deadline` (epoch seconds) less what the export will take (reading the trials back, as this
    did, and its refit). Only as many candidates as the time left affords after CONFIRM_START_S
    are run, and where that is none but the best candidate's runs themselves fit, those are tried
    (what has not ended by the deadline is cancelled); runs a resumed experiment finished before
    are not run again. Writes `confirm/` (tune.export.confirmation)."""
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
