"""Export the best trial of an experiment: `<experiment>/best/` and `<experiment>/trials.csv`.

The chosen configuration is the confirmation's winner (tune.confirmation: the best mean val MSE
over fresh seeds), as its first seed's confirmation run left it at that run's best epoch; without a
confirmation, the search's best trial at its best epoch, from its checkpoint. That model trained on
the training part only, and everything was chosen on the validation part; so by default
(--refit train+val) the exported model is that configuration trained again on training +
validation for the chosen epochs, and the test figures are that model's, computed once here on a
part the search never saw (`train_only` in metrics.json keeps the chosen model's own figures
beside them). `best/config.yaml` retrains the exported model (`python -m mf.train --config
best/config.yaml`; its `train_on` names the parts), `best/model.pt` holds its weights (with the id
mapping), and `best/metrics.json` its figures, beside those of the tutorial's configuration
trained the same way on the same split, the reference the tuning is judged against. Where the
trials measured val NDCG (--val-ndcg-k), `<experiment>/best-ranking/` holds the same files for the
trial with the best val NDCG, trained again to that trial's best NDCG epoch and refit by the same
rule. Reads only files: it works on a finished, running or interrupted experiment, without Ray.

    python -m tune.export runs/mf-tune
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mf.atomic import replace_folder, write_json, write_yaml
from mf.config import TrainConfig, from_dict, tutorial_config
from mf.data import Dataset
from mf.errors import MFError, user_errors_exit
from mf.metrics import EPOCH_SECONDS, VAL_NDCG, prefixed
from mf.ranking import PREDICTED, RELEVANT_RATING, FactorScorer, Ranking
from mf.ranking_choice import (
    BUDGET_CELLS,
    MAX_CELLS,
    RANKING_FILE,
    RankingChoice,
    carry_choice,
    choose_ranking,
    evaluate_rankings,
    sample_users,
    users_to_score,
    write_ranking,
)
from mf.training import Trainer, dataset_for, read_checkpoint
from tune.confirmation import (
    REFIT_RUNS,
    Candidate,
    Confirmed,
    checkpoint_file,
    fresh_seeds,
    read_reference,
    read_summary,
    run_config,
)
from tune.lock import writer_lock
from tune.results import TrialRecord, best_ranking_trial, best_trial, collect_trials, write_trials_csv
from tune.settings import REFITS, doc, read_experiment, recorded_settings, refit_grace_s, trial_config
from tune.study_storage import load_experiment_study
from tune.trial_files import newest_checkpoint

BEST_DIR = "best"
BEST_RANKING_DIR = "best-ranking"
METRICS_FILE = "metrics.json"
RANK_K = 10
SPLIT_KEYS = ("data", "split", "val_n", "test_n", "val_fraction", "test_fraction", "seed", "split_seed")
"""The keys the tutorial's reference run shares with the experiment: the same ratings, the same split."""


def collect_and_write_trials(folder: Path) -> list[TrialRecord]:
    """Read every trial of the experiment, with its confirmation where it had one, and (re)write
    its trials.csv (atomically): from the files alone, on a finished, running or interrupted run.

    Args:
        folder: the experiment folder (`<storage_path>/<name>`).

    Returns:
        One record per trial, in the order the searcher proposed them.

    Raises:
        ConfigError: `folder` is not an experiment, or its experiment.yaml or study is damaged.
    """
    experiment = read_experiment(folder)
    study = load_experiment_study(folder, experiment["settings"])
    records = collect_trials(folder, max_epochs=int(experiment["settings"]["max_epochs"]), study=study)
    confirmed = {c.trial_id: c for c in read_summary(folder)}
    for r in records:
        if r.trial_id in confirmed:
            c = confirmed[r.trial_id]
            r.confirm_val_mse, r.confirm_val_mse_sd, r.confirm_epoch = c.mean, c.sd, c.epoch
    write_trials_csv(folder, records)
    return records


def model_metrics(trainer: Trainer, dataset: Dataset, *, max_cells: int = MAX_CELLS) -> dict[str, float]:
    """Rating and ranking metrics of a trained model on each held-out part (val_mse, test_ndcg@10, ...).

    Ranking by predicted rating, over the users with a relevant held-out rating, a seeded sample
    past `users_to_score(n_items, max_cells=max_cells)` (as mf.ranking_choice scores its choice):
    every user of ml-25m would be minutes.
    """
    scorer = FactorScorer.from_model(trainer.scoring_model)
    out: dict[str, float] = {}
    for part, heldout in (("val", dataset.val), ("test", dataset.test)):
        if heldout is None:
            continue
        out.update(prefixed(trainer.evaluate(part), part))
        sample = sample_users(
            heldout,
            threshold=RELEVANT_RATING,
            max_users=users_to_score(dataset.n_items, max_cells=max_cells),
            seed=0,
        )
        r = evaluate_rankings({PREDICTED: Ranking(PREDICTED)}, scorer, dataset, k=RANK_K, heldout=sample)[
            PREDICTED
        ]
        out.update(
            {
                f"{part}_precision@{RANK_K}": r.precision,
                f"{part}_recall@{RANK_K}": r.recall,
                f"{part}_ndcg@{RANK_K}": r.ndcg,
            }
        )
    return out


def reference_config(base: TrainConfig | dict[str, Any], *, train_on: str = "train") -> TrainConfig:
    """The tutorial's configuration on the experiment's data and split, trained on `train_on` as the
    export's test figure is (it selects nothing, so it may train on whatever the export did): the
    reference."""
    values = base.to_dict() if isinstance(base, TrainConfig) else base
    split = {k: values[k] for k in SPLIT_KEYS if k in values}
    return tutorial_config(**split, train_on=train_on, device="cpu")


def reference_train_on(refit: str, dataset: Dataset) -> str:
    """What the tutorial's reference trains on beside an export refit by `refit` (a --refit rule):
    train + validation where the split has a test part to judge it on, as the export's test figure
    is; else train, so that it has a held-out val figure."""
    return "train" if refit == "none" or dataset.test is None else "train+val"


def tutorial_metrics(
    base: TrainConfig | dict[str, Any], dataset: Dataset, *, train_on: str = "train"
) -> tuple[TrainConfig, dict[str, float]]:
    """The reference trained on the experiment's data and split (`dataset`, the split's training
    part with its held-out parts), and its metrics."""
    config = reference_config(base, train_on=train_on)
    data = dataset.training_on(train_on)
    trainer = Trainer(config, data, device="cpu")
    trainer.fit()
    return config, model_metrics(trainer, data)


def trainer_at_best(state: dict[str, Any], source: str, dataset: Dataset | None = None) -> Trainer:
    """A run's checkpoint `state` (which carries its best epoch's weights) as a trainer at that best
    epoch, with a config whose `epochs` is that epoch; `dataset` defaults to the config's own."""
    config = from_dict(state["config"], where=source)
    config = config.replace(epochs=int(state["best"]["epoch"]), device="auto")
    trainer = Trainer(config, dataset if dataset is not None else dataset_for(config), device="cpu")
    trainer.load_state(state, source=source)
    trainer.rewind_to_best()
    return trainer


def best_trainer(folder: Path, best: TrialRecord, dataset: Dataset) -> Trainer:
    """The best trial's model at its best epoch, from its newest checkpoint."""
    state = newest_checkpoint(best.trial_dir) if best.trial_dir is not None else None
    if state is None or not state.get("best"):
        raise MFError(f"{folder}: trial {best.trial_id} has no readable checkpoint to export")
    trainer = trainer_at_best(state, f"trial {best.trial_id} checkpoint", dataset)
    best_epoch = trainer.epoch
    if best_epoch != best.best_epoch:
        # Only when the run ended (time budget) between the trial's best epoch and its next checkpoint.
        print(
            f"note: trial {best.trial_id} was best at epoch {best.best_epoch}, but its last checkpoint "
            f"holds epoch {best_epoch} as its best; exporting that"
        )
    return trainer


def confirmed_trainer(folder: Path, base: TrainConfig, winner: Confirmed, dataset: Dataset) -> Trainer:
    """The confirmation's winner: its first seed's run, at that run's best epoch (saved by the
    confirmation); for an experiment that has no such file, trained again for the confirmed epochs."""
    path = checkpoint_file(folder, winner.trial_id, winner.seeds[0])
    if path.is_file():
        return trainer_at_best(read_checkpoint(path), str(path), dataset)
    candidate = Candidate(winner.trial_id, winner.params, winner.search_best)
    config = run_config(base, candidate, seed=winner.seeds[0], max_epochs=winner.epoch).replace(device="auto")
    trainer = Trainer(config, dataset, device="cpu")
    trainer.fit()
    return trainer


def refit_config(
    chosen: TrainConfig, *, epochs: int, train_on: str, larger: float, ensemble: int = 1
) -> TrainConfig:
    """The chosen model's configuration (its seed, split and schedule) trained from scratch on the
    parts `train_on` names, `larger` times the chosen run's training part, for `epochs` epochs: the
    same epochs, each as much of a pass over the larger part as it was of the smaller one
    (docs/decisions.md: the refit's epoch count), as an average of `ensemble` such runs."""
    epoch_ratings = round(chosen.epoch_ratings * larger)
    return chosen.replace(
        train_on=train_on, epochs=epochs, epoch_ratings=epoch_ratings, ensemble=ensemble, device="auto"
    )


def refit(chosen: TrainConfig, dataset: Dataset, *, epochs: int, train_on: str, ensemble: int = 1) -> Trainer:
    """`refit_config` trained on `dataset` (the split's training part with its held-out parts)."""
    data = dataset.training_on(train_on)
    config = refit_config(
        chosen,
        epochs=epochs,
        train_on=train_on,
        larger=len(data.train) / len(dataset.train),
        ensemble=ensemble,
    )
    trainer = Trainer(config, data, device="cpu")
    trainer.fit()
    return trainer


def refit_seconds(record: TrialRecord, epochs: int, dataset: Dataset, train_on: str) -> float:
    """What refitting `record`'s configuration for `epochs` epochs on `train_on` will take: its median
    epoch in the search, scaled by the larger training part (nan where it reported no epoch time)."""
    if record.history is None or EPOCH_SECONDS not in record.history:
        return math.nan
    seconds = record.history[EPOCH_SECONDS].dropna()
    larger = len(dataset.training_on(train_on).train) / max(len(dataset.train), 1)
    return float(seconds.median()) * epochs * larger if len(seconds) else math.nan


@dataclass
class Exported:
    """A model to export, with its figures and the ranking it serves."""

    trainer: Trainer
    metrics: dict[str, Any]
    choice: RankingChoice


def refit_export(
    chosen: Trainer,
    dataset: Dataset,
    metrics: dict[str, Any],
    choice: RankingChoice,
    *,
    rule: str,
    epochs: int,
    record: TrialRecord | None = None,
    deadline: float | None = None,
    max_cells: int = MAX_CELLS,
    ensemble: int = 1,
) -> Exported:
    """The export under --refit `rule` of the `chosen` model (trained on train, with its `metrics`
    and ranking `choice` made on val): refit on train + validation for `epochs` epochs, its test
    figures in place of the chosen model's (kept under `train_only`), and with `all` a model trained
    on every rating for serving. Where the refit's estimate (from `record`'s epoch times,
    `refit_seconds`) would end it after `deadline` (epoch seconds), nothing is refit, and
    metrics.json says why. Each refit model averages `ensemble` runs (TrainConfig.ensemble), or as
    many as end by `deadline`."""
    if rule == "none":
        return Exported(chosen, {**metrics, "trained_on": list(dataset.trained_on)}, choice)
    cost_s = (
        math.nan if record is None else refit_seconds(record, epochs, dataset, "train+val") * REFIT_RUNS[rule]
    )
    seconds_left = None if deadline is None else deadline - time.time()
    if seconds_left is not None and math.isfinite(cost_s):
        ensemble = max(1, min(ensemble, math.floor(seconds_left / cost_s))) if cost_s > 0 else ensemble
    cost_s *= ensemble
    if seconds_left is not None and math.isfinite(cost_s) and cost_s > seconds_left:
        why = (
            f"a refit of {cost_s:.0f} s did not fit in the {max(seconds_left, 0):.0f} s left of the budget; "
            "`python -m tune.export` refits it"
        )
        print(f"refit: {why}; exported the model trained on train")
        return Exported(
            chosen, {**metrics, "trained_on": list(dataset.trained_on), "refit": {"skipped": why}}, choice
        )
    started = time.monotonic()
    held = {k: v for k, v in metrics.items() if not k.startswith(("val_", "test_"))}
    train_only = {k: v for k, v in metrics.items() if k.startswith(("val_", "test_"))}
    model = refit(chosen.config, dataset, epochs=epochs, train_on="train+val", ensemble=ensemble)
    out = {
        **held,
        "trained_on": list(model.dataset.trained_on),
        "epoch": model.epoch,
        **model_metrics(model, model.dataset, max_cells=max_cells),
        "train_only": {"trained_on": list(dataset.trained_on), "epoch": chosen.epoch, **train_only},
    }
    scorer = FactorScorer.from_model(model.scoring_model)
    choice = carry_choice(choice, scorer, model.dataset, max_cells=max_cells)
    if rule == "all":
        out["test_from"] = out["trained_on"]  # the figures above: no part is held out from this one
        model = refit(chosen.config, dataset, epochs=epochs, train_on="all", ensemble=ensemble)
        out["trained_on"] = list(model.dataset.trained_on)
        scorer = FactorScorer.from_model(model.scoring_model)
        choice = carry_choice(choice, scorer, model.dataset, max_cells=max_cells)
    out["refit"] = {
        "rule": rule,
        "epochs": epochs,
        "ensemble": ensemble,
        "seconds": round(time.monotonic() - started, 2),
    }
    return Exported(model, out, choice)


def export_best(
    folder: str | os.PathLike,
    *,
    records: list[TrialRecord] | None = None,
    quiet: bool = False,
    train_reference: bool = True,
    deadline: float | None = None,
    refit: str | None = None,
    dataset: Dataset | None = None,
    ensemble: int | None = None,
) -> dict[str, Any]:
    """Write best/ for the experiment in `folder`: the chosen configuration's model (the
    confirmation's winner, else the search's best trial), refit as `refit` and `ensemble` say, with
    config.yaml (it retrains the model exactly), metrics.json, model.pt and ranking.json. The
    folder is swapped in whole: a crash leaves the previous export.

    Args:
        folder: the experiment folder.
        records: its trials, where the caller just read them (and wrote trials.csv); None: read
            here, and trials.csv written.
        quiet: print nothing (else the export's summary, the test error first).
        train_reference: train the tutorial's configuration on the same split for comparison when
            the confirmation did not (tune.run, bound by its budget, says no: on a large data set
            its ten dense epochs take minutes); else it is left out with the reason.
        deadline: the end of the run's budget (epoch seconds): a refit whose estimate would end
            later than it plus `tune.settings.refit_grace_s` is skipped, and metrics.json says why;
            an ensemble gets as many runs as fit. None: no limit.
        refit: a --refit rule (`none`, `train+val`, `all`); None: the experiment's own.
        dataset: the experiment's split, already loaded (tune.run's driver holds it); None: loaded here.
        ensemble: runs each refit model averages; None: the experiment's --ensemble.

    Returns:
        The figures written to best/metrics.json.

    Raises:
        ConfigError: `folder` is not an experiment, or its files are damaged.
        MFError: no trial has a readable checkpoint to export.
    """
    folder = Path(folder).resolve()
    if records is None:
        records = collect_and_write_trials(folder)
    experiment = read_experiment(folder)
    settings = recorded_settings(experiment)
    rule = refit or settings.refit
    base = from_dict(experiment["base_config"], where=f"{folder} experiment.yaml (base_config)")
    dataset = dataset if dataset is not None else dataset_for(base)
    by_id = {r.trial_id: r for r in records}
    confirmed = read_summary(folder)
    for c in [c for c in confirmed if c.trial_id not in by_id]:
        print(
            f"warning: the confirmation's {c.trial_id} is not among the readable trials; passed over",
            file=sys.stderr,
        )
    confirmed = [c for c in confirmed if c.trial_id in by_id]
    if confirmed:
        winner = confirmed[0]
        best = by_id[winner.trial_id]
        trainer = confirmed_trainer(folder, base, winner, dataset)
        epochs = winner.epoch  # the epoch of the best mean over the fresh seeds
    else:
        best = best_trial(records)
        trainer = best_trainer(folder, best, dataset)
        epochs = trainer.epoch
    # model_metrics rank by predicted rating; mf.recommend and mf.serve rank as chosen here, on val.
    cells = budget_cells(deadline)
    say_sampled(dataset, cells)
    choice = choose_ranking(FactorScorer.from_model(trainer.scoring_model), dataset, max_cells=cells)
    metrics: dict[str, Any] = {
        "trial_id": best.trial_id,
        "optuna_number": best.optuna_number,
        "epoch": trainer.epoch,
        **model_metrics(trainer, dataset, max_cells=cells),
    }
    refit_by = deadline
    if deadline is not None and settings.time_budget_s:
        refit_by = deadline + refit_grace_s(settings.time_budget_s)
    exported = refit_export(
        trainer,
        dataset,
        metrics,
        choice,
        rule=rule,
        epochs=epochs,
        record=best,
        deadline=refit_by,
        max_cells=cells,
        ensemble=ensemble or settings.ensemble,
    )
    metrics = exported.metrics
    metrics.update(held_out_counts(dataset))
    reference_on = reference_train_on(rule if "train_only" in metrics else "none", dataset)
    tutorial = reference_config(base, train_on=reference_on)
    reference = read_reference(folder, tutorial.to_dict())
    if reference is None and train_reference:
        reference = tutorial_metrics(base, dataset, train_on=reference_on)[1]
    metrics.update(
        params=best.params,
        ranking=ranking_summary(exported.choice),
        search_best_val_mse=best.best_val_mse,
        trials=len(records),
        tutorial={"config": tutorial.to_dict(), "epochs": tutorial.epochs, **(reference or {})},
    )
    if reference is None:
        metrics["tutorial"]["skipped"] = (
            "its run did not fit in the budget; `python -m tune.export` trains it"
        )
    if confirmed:
        metrics["confirmation"] = {
            "seeds": list(winner.seeds),
            "epoch": winner.epoch,
            "val_mse_mean": winner.mean,
            "val_mse_sd": winner.sd,
            "candidates": len(confirmed),
        }

    write_export(folder / BEST_DIR, exported.trainer, metrics, exported.choice)
    if not quiet:
        print(format_export(metrics, folder / BEST_DIR))
    return metrics


def budget_cells(deadline: float | None) -> int:
    """What the ranking figures score per rule (users x items): MAX_CELLS, or BUDGET_CELLS for an
    export at the end of a time budget (`deadline` given)."""
    return MAX_CELLS if deadline is None else BUDGET_CELLS


def say_sampled(dataset: Dataset, cells: int) -> None:
    """Say so where `cells` makes the ranking figures score fewer users than MAX_CELLS would."""
    fewer, full = users_to_score(dataset.n_items, max_cells=cells), users_to_score(dataset.n_items)
    if fewer < min(full, dataset.n_users):
        print(
            f"ranking: chosen and scored on {fewer:,} users ({full:,} without a budget) to fit it; "
            "`python -m tune.export` scores the larger sample"
        )


def held_out_counts(dataset: Dataset) -> dict[str, int]:
    """How many ratings the test figures are computed on, and how many of the held-out parts' ratings
    were left out because the training data has no rating of their user or item."""
    out = {"test_ratings": len(dataset.test)} if dataset.test is not None else {}
    return {**out, **{f"{part}_unseen": n for part, n in dataset.unseen.items()}}


def write_export(target: Path, trainer: Trainer, metrics: dict[str, Any], choice: RankingChoice) -> None:
    """config.yaml, metrics.json, model.pt and the served ranking in `target`, written into a fresh
    folder beside it and then swapped in (mf.atomic.replace_folder): a crash leaves the old export
    whole, and a reader never finds no export. The caller holds the experiment's writer lock
    (tune.lock), so staging folders found beside `target` are a killed export's, and are removed."""
    for leftover in target.parent.glob(f".{target.name}-staging-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-staging-", dir=target.parent))
    try:
        write_yaml(staging / "config.yaml", trainer.config.to_dict())
        write_json(staging / METRICS_FILE, metrics)
        trainer.save_checkpoint(staging / "model.pt")
        write_ranking(staging, choice)  # what mf.recommend and mf.serve rank by
        replace_folder(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def export_best_ranking(
    folder: str | os.PathLike,
    *,
    records: list[TrialRecord] | None = None,
    quiet: bool = False,
    refit: str | None = None,
    deadline: float | None = None,
    dataset: Dataset | None = None,
    ensemble: int | None = None,
) -> dict[str, Any] | None:
    """Write best-ranking/ for the trial with the best val NDCG at any epoch, refit as `refit` and
    `ensemble` say (None: the experiment's --refit and --ensemble); None (and nothing written) where the trials did not measure it,
    or where its training would not end by `deadline` (epoch seconds; said on stdout).

    Trained again from the trial's configuration and seed to its best NDCG epoch, since its
    checkpoint holds the weights of its best val-MSE epoch; the training is deterministic on one
    device, and a retrained NDCG that differs from the search's is said. `dataset`: as export_best.
    """
    folder = Path(folder).resolve()
    if records is None:
        records = collect_and_write_trials(folder)
    best = best_ranking_trial(records)
    if best is None or best.ndcg_epoch is None:
        return None
    experiment = read_experiment(folder)
    base = from_dict(experiment["base_config"], where=f"{folder} experiment.yaml (base_config)")
    settings = recorded_settings(experiment)
    rule = refit or settings.refit
    config = trial_config(base, best.params, settings.max_epochs, own_seed=settings.own_trial_seeds)
    config = config.replace(epochs=best.ndcg_epoch, device="auto")
    dataset = dataset if dataset is not None else dataset_for(base)
    cost = refit_seconds(best, best.ndcg_epoch, dataset, "train")
    left = None if deadline is None else deadline - time.time()
    if left is not None and math.isfinite(cost) and cost > left:
        print(
            f"best-ranking: training trial {best.trial_id} again ({cost:.0f} s) did not fit in the "
            f"{max(left, 0):.0f} s left of the budget; `python -m tune.export` writes it"
        )
        return None
    trainer = Trainer(config, dataset, device="cpu")
    trainer.fit()
    retrained = float(trainer.history[-1][VAL_NDCG])
    if abs(retrained - best.best_val_ndcg) > 1e-6:
        print(
            f"note: trial {best.trial_id}'s val NDCG at epoch {best.ndcg_epoch} was {best.best_val_ndcg:.4f} "
            f"in the search and {retrained:.4f} trained again here (another device or thread count)"
        )
    cells = budget_cells(deadline)  # said by export_best, which runs first
    choice = choose_ranking(FactorScorer.from_model(trainer.scoring_model), dataset, max_cells=cells)
    metrics: dict[str, Any] = {
        "trial_id": best.trial_id,
        "optuna_number": best.optuna_number,
        "epoch": trainer.epoch,
        "objective": f"val NDCG@{base.val_ndcg_k}",
        "search_best_val_ndcg": best.best_val_ndcg,
        "retrained_val_ndcg": retrained,
        **model_metrics(trainer, dataset, max_cells=cells),
    }
    exported = refit_export(
        trainer,
        dataset,
        metrics,
        choice,
        rule=rule,
        epochs=best.ndcg_epoch,
        record=best,
        deadline=deadline,
        max_cells=cells,
        ensemble=ensemble or settings.ensemble,
    )
    metrics = {
        **exported.metrics,
        **held_out_counts(dataset),
        "params": best.params,
        "ranking": ranking_summary(exported.choice),
    }
    write_export(folder / BEST_RANKING_DIR, exported.trainer, metrics, exported.choice)
    if not quiet:
        print(format_ranking_export(metrics, folder / BEST_RANKING_DIR))
    return metrics


def ranking_summary(choice: RankingChoice) -> dict[str, Any]:
    """The served ranking (mf.ranking_choice) and its NDCG@k beside most-popular's, per part."""
    out: dict[str, Any] = {"served": str(choice.ranking), "file": RANKING_FILE}
    for part, figures in (("val", choice.val), ("test", choice.test)):
        for name in ("served", "popular", "predicted") if figures else ():
            out[f"{part}_{name}_ndcg@{choice.k}"] = figures[name]["ndcg"]
    return out


def headline(exported: dict[str, Any]) -> str:
    """One line, the figure a user should judge the run by: the exported model's test error (a part
    the search never saw), or a plain statement that no figure is unbiased without a test part."""
    if "test_mse" not in exported:
        return (
            "result: no test part, so no unbiased figure: the val figures below were all chosen on the "
            "part they are measured on (hold one out: --test-n 5, --test-fraction or --test-data)"
        )
    tutorial = exported.get("tutorial", {})
    beside = [f"the tutorial's configuration {tutorial['test_mse']:.4f}"] if "test_mse" in tutorial else []
    if "test_mse" in exported.get("train_only", {}):
        beside.insert(0, f"the chosen model before its refit {exported['train_only']['test_mse']:.4f}")
    trained = "+".join(exported.get("test_from", exported.get("trained_on", ["train"])))
    return (
        f"result: test_mse {exported['test_mse']:.4f} on {exported.get('test_ratings', 0):,} ratings the search "
        f"never saw (the exported configuration trained on {trained})"
        + (f"; {', '.join(beside)}" if beside else "")
    )


def format_export(metrics: dict[str, Any], where: Path) -> str:
    """The export in a few lines, the honest figure first: the exported model's test error (on a part
    the search never saw), then the confirmation's mean, then the search's best, which is a
    selection figure; and the tutorial's configuration trained the same way on the same split."""
    trained_on = "+".join(metrics.get("trained_on", ["train"]))
    runs = metrics.get("refit", {}).get("ensemble", 1)
    lines = [
        f"exported {where}: trial {metrics['trial_id']}'s configuration, trained on {trained_on} for "
        f"{metrics['epoch']} epochs"
        + (f", the average of {runs} runs with different seeds" if runs > 1 else "")
    ]
    train_only = metrics.get("train_only", {})
    if "test_mse" in metrics:
        tested = "+".join(metrics.get("test_from", metrics.get("trained_on", ["train"])))
        source = (
            f" (by the model trained on {tested}: none is held out from this one)"
            if "test_from" in metrics
            else ""
        )
        before = (
            f"; the chosen model, trained on train only: {train_only['test_mse']:.4f}"
            if "test_mse" in train_only
            else ""
        )
        unseen = metrics.get("test_unseen")
        left = f", {unseen:,} of unknown users or items left out" if unseen else ""
        lines.append(
            f"  test_mse {metrics['test_mse']:.4f} on {metrics.get('test_ratings', 0):,} held-out ratings{left}"
            f"{source}{before}"
        )
    else:
        lines.append(
            "  no test part: every figure below was chosen on the validation part, so none is an unbiased "
            "estimate of the error on new ratings (hold one out: --test-n, --test-fraction or --test-data)"
        )
    confirmation = metrics.get("confirmation")
    if confirmation:
        lines.append(
            f"  confirmed over {fresh_seeds(len(confirmation['seeds']))}: val_mse {confirmation['val_mse_mean']:.4f} "
            f"± {confirmation['val_mse_sd']:.4f} (trained on train)"
        )
    trials = metrics.get("trials")
    lines.append(
        f"  the search's best: val_mse {metrics['search_best_val_mse']:.4f}, a selection figure (the lowest "
        f"{'of ' + format(trials, ',') + ' trials ' if trials else ''}on the part they were chosen on)"
    )
    if "refit" in metrics and "skipped" in metrics["refit"]:
        lines.append(f"  refit: {metrics['refit']['skipped']}")
    tutorial = metrics["tutorial"]
    part = "test" if "test_mse" in metrics else "val"
    ref = tutorial.get("skipped") or f"{part}_mse {tutorial[f'{part}_mse']:.4f}"
    ref_on = tutorial.get("config", {}).get("train_on", "train")
    lines.append(f"  the tutorial's configuration on the same split, trained on {ref_on}: {ref}")
    ranking = metrics.get("ranking", {})
    if ranking:
        rpart = "test" if f"test_served_ndcg@{RANK_K}" in ranking else "val"
        lines.append(
            f"  ranked by {ranking['served']} ({ranking['file']}): {rpart} NDCG@{RANK_K} "
            f"{ranking[f'{rpart}_served_ndcg@{RANK_K}']:.4f}, most popular {ranking[f'{rpart}_popular_ndcg@{RANK_K}']:.4f}"
        )
    return "\n".join(lines)


def format_ranking_export(metrics: dict[str, Any], where: Path) -> str:
    """One line: the trial best by val NDCG, its ranking on the held-out parts and its rating error."""
    ranking = metrics["ranking"]
    part = "test" if f"test_served_ndcg@{RANK_K}" in ranking else "val"
    mse = metrics.get(f"{part}_mse", metrics.get("train_only", {}).get(f"{part}_mse", math.nan))
    return (
        f"exported {where}: trial {metrics['trial_id']}'s configuration by {metrics['objective']} "
        f"{metrics['search_best_val_ndcg']:.4f}, trained on {'+'.join(metrics.get('trained_on', ['train']))} "
        f"for {metrics['epoch']} epochs; ranked by {ranking['served']}: "
        f"{part} NDCG@{RANK_K} {ranking[f'{part}_served_ndcg@{RANK_K}']:.4f}, most popular "
        f"{ranking[f'{part}_popular_ndcg@{RANK_K}']:.4f}; {part}_mse {mse:.4f}"
    )


@user_errors_exit
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tune.export",
        description="Write <experiment>/best/ (config.yaml, metrics.json, model.pt), best-ranking/ "
        "where the trials measured val NDCG, and trials.csv.",
    )
    parser.add_argument("experiment", type=Path, help="experiment folder (e.g. runs/mf-tune)")
    parser.add_argument(
        "--refit",
        choices=list(REFITS),
        help=f"what the exported model trains on instead of the experiment's --refit: {doc('refit')}",
    )
    parser.add_argument(
        "--ensemble",
        type=int,
        help=f"runs each refit model averages instead of the experiment's --ensemble: {doc('ensemble')}",
    )
    args = parser.parse_args(argv)
    if args.ensemble is not None and args.ensemble < 1:
        parser.error(f"--ensemble: {args.ensemble} must be >= 1")
    read_experiment(args.experiment)  # an experiment folder, or a one-line error
    with writer_lock(args.experiment, "tune.export"):
        records = collect_and_write_trials(args.experiment.resolve())
        export_best(args.experiment, records=records, refit=args.refit, ensemble=args.ensemble)
        export_best_ranking(args.experiment, records=records, refit=args.refit, ensemble=args.ensemble)
    return 0


if __name__ == "__main__":
    sys.exit(main())
