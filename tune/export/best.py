"""Export the best trial of an experiment: `<experiment>/best/` and `<experiment>/trials.csv`.

The chosen configuration is the confirmation's winner (tune.export.confirmation: the best mean val MSE
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
from dataclasses import replace
from pathlib import Path
from typing import Any

from mf.atomic import replace_folder, write_json, write_yaml
from mf.config import from_dict
from mf.data import Dataset
from mf.errors import user_errors_exit
from mf.metrics import VAL_NDCG
from mf.ranking import FactorScorer
from mf.ranking_choice import RankingChoice, choose_ranking, write_ranking
from mf.training import Trainer, dataset_for
from tune.export.confirmation import read_reference, read_summary
from tune.export.models import (
    best_trainer,
    budget_cells,
    confirmed_trainer,
    held_out_counts,
    model_metrics,
    reference_config,
    reference_train_on,
    say_sampled,
    tutorial_metrics,
)
from tune.export.refit import refit_export, refit_seconds
from tune.export.summary import (
    BEST_DIR,
    BEST_RANKING_DIR,
    METRICS_FILE,
    format_export,
    format_ranking_export,
    ranking_summary,
)
from tune.record.lock import writer_lock
from tune.record.results import TrialRecord, best_ranking_trial, best_trial, collect_trials, write_trials_csv
from tune.record.study import load_experiment_study
from tune.settings import (
    REFITS,
    ExperimentSettings,
    doc,
    read_experiment,
    recorded_settings,
    refit_grace_s,
    trial_config,
)


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


def export_settings(
    experiment: dict[str, Any], *, refit: str | None, ensemble: int | None
) -> ExperimentSettings:
    """The experiment's recorded settings with the export's `refit` and `ensemble` in place of its own
    (None: its own), checked by the settings' own rules (a ConfigError names the one broken)."""
    overrides = {"refit": refit, "ensemble": ensemble}
    return replace(recorded_settings(experiment), **{k: v for k, v in overrides.items() if v is not None})


def refit_deadline(deadline: float | None, settings: ExperimentSettings) -> float | None:
    """When a refit must end (epoch seconds): the run's `deadline` plus `refit_grace_s` of its
    budget (None: no limit); both exports' refits follow it."""
    if deadline is None or not settings.time_budget_s:
        return deadline
    return deadline + refit_grace_s(settings.time_budget_s)


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
    settings = export_settings(experiment, refit=refit, ensemble=ensemble)
    rule = settings.refit
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
    exported = refit_export(
        trainer,
        dataset,
        metrics,
        choice,
        rule=rule,
        epochs=epochs,
        record=best,
        deadline=refit_deadline(deadline, settings),
        max_cells=cells,
        ensemble=settings.ensemble,
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


def write_export(target: Path, trainer: Trainer, metrics: dict[str, Any], choice: RankingChoice) -> None:
    """config.yaml, metrics.json, model.pt and the served ranking in `target`, written into a fresh
    folder beside it and then swapped in (mf.atomic.replace_folder): a crash leaves the old export
    whole, and a reader never finds no export. The caller holds the experiment's writer lock
    (tune.record.lock), so staging folders found beside `target` are a killed export's, and are removed."""
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
    settings = export_settings(experiment, refit=refit, ensemble=ensemble)
    rule = settings.refit
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
        deadline=refit_deadline(deadline, settings),
        max_cells=cells,
        ensemble=settings.ensemble,
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
    read_experiment(args.experiment)  # an experiment folder, or a one-line error
    with writer_lock(args.experiment, "tune.export"):
        # Settings their rules accept, or a one-line error, before anything is written.
        export_settings(read_experiment(args.experiment), refit=args.refit, ensemble=args.ensemble)
        records = collect_and_write_trials(args.experiment.resolve())
        export_best(args.experiment, records=records, refit=args.refit, ensemble=args.ensemble)
        export_best_ranking(args.experiment, records=records, refit=args.refit, ensemble=args.ensemble)
    return 0
