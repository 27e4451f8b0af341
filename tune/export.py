"""Export the best trial of an experiment: `<experiment>/best/` and `<experiment>/trials.csv`.

The exported configuration is the confirmation's winner (tune.confirmation: the best mean val MSE
over fresh seeds), as its first seed's confirmation run left it at that run's best epoch; without a
confirmation, the search's best trial at its best epoch, from its checkpoint.
`best/config.yaml` retrains it (`python -m mf.train --config best/config.yaml`), `best/model.pt`
holds its weights (with the id mapping), and `best/metrics.json` its metrics on the validation part
and, where the split holds out a test part, on the test part, computed once here and never seen by
the search; beside them the same metrics of the tutorial's configuration trained on the same split,
the reference the tuning is judged against. Where the trials measured val NDCG (--val-ndcg-k),
`<experiment>/best-ranking/` holds the same files for the trial with the best val NDCG, trained
again to that trial's best NDCG epoch. Reads only files: it works on a finished, running or
interrupted experiment, without Ray.

    python -m tune.export runs/mf-tune
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from mf.atomic import write_json, write_yaml
from mf.config import TrainConfig, from_dict, tutorial_config
from mf.data import Dataset
from mf.errors import MFError, user_errors_exit
from mf.metrics import VAL_NDCG, prefixed
from mf.ranking import PREDICTED, RELEVANT_RATING, FactorScorer, Ranking
from mf.ranking_choice import (
    RANKING_FILE,
    RankingChoice,
    choose_ranking,
    evaluate_rankings,
    sample_users,
    users_to_score,
    write_ranking,
)
from mf.training import Trainer, dataset_for, read_checkpoint
from tune.confirmation import (
    Candidate,
    Confirmed,
    checkpoint_file,
    fresh_seeds,
    read_reference,
    read_summary,
    run_config,
)
from tune.results import TrialRecord, best_ranking_trial, best_trial, collect_trials, write_trials_csv
from tune.settings import read_experiment, recorded_settings, trial_config
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
    its trials.csv."""
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


def model_metrics(trainer: Trainer, dataset: Dataset) -> dict[str, float]:
    """Rating and ranking metrics of a trained model on each held-out part (val_mse, test_ndcg@10, ...).

    Ranking by predicted rating, over the users with a relevant held-out rating, a seeded sample
    past `users_to_score` (as mf.ranking_choice scores its choice): every user of ml-25m would be minutes.
    """
    scorer = FactorScorer.from_model(trainer.model)
    out: dict[str, float] = {}
    for part, heldout in (("val", dataset.val), ("test", dataset.test)):
        if heldout is None:
            continue
        out.update(prefixed(trainer.evaluate(part), part))
        sample = sample_users(
            heldout, threshold=RELEVANT_RATING, max_users=users_to_score(dataset.n_items), seed=0
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


def reference_config(base: TrainConfig | dict[str, Any]) -> TrainConfig:
    """The tutorial's configuration on the experiment's data and split: the reference."""
    values = base.to_dict() if isinstance(base, TrainConfig) else base
    return tutorial_config(**{k: values[k] for k in SPLIT_KEYS if k in values}, device="cpu")


def tutorial_metrics(
    base: TrainConfig | dict[str, Any], dataset: Dataset
) -> tuple[TrainConfig, dict[str, float]]:
    """The reference trained on the experiment's data and split, and its metrics."""
    config = reference_config(base)
    trainer = Trainer(config, dataset, device="cpu")
    trainer.fit()
    return config, model_metrics(trainer, dataset)


def trainer_at_best(state: dict[str, Any], source: str, dataset: Dataset | None = None) -> Trainer:
    """A run's checkpoint `state` (which carries its best epoch's weights) as a trainer at that best
    epoch, with a config whose `epochs` is that epoch; `dataset` defaults to the config's own."""
    config = from_dict(state["config"], where=source)
    config = config.replace(epochs=int(state["best"]["epoch"]), device="auto")
    trainer = Trainer(config, dataset if dataset is not None else dataset_for(config), device="cpu")
    trainer.load_state(state, source=source)
    trainer.rewind_to_best()
    return trainer


def best_trainer(folder: Path, best: TrialRecord) -> Trainer:
    """The best trial's model at its best epoch, from its newest checkpoint."""
    state = newest_checkpoint(best.trial_dir) if best.trial_dir is not None else None
    if state is None or not state.get("best"):
        raise MFError(f"{folder}: trial {best.trial_id} has no readable checkpoint to export")
    trainer = trainer_at_best(state, f"trial {best.trial_id} checkpoint")
    best_epoch = trainer.epoch
    if best_epoch != best.best_epoch:
        # Only when the run ended (time budget) between the trial's best epoch and its next checkpoint.
        print(
            f"note: trial {best.trial_id} was best at epoch {best.best_epoch}, but its last checkpoint "
            f"holds epoch {best_epoch} as its best; exporting that"
        )
    return trainer


def confirmed_trainer(folder: Path, base: TrainConfig, winner: Confirmed) -> Trainer:
    """The confirmation's winner: its first seed's run, at that run's best epoch (saved by the
    confirmation); for an experiment that has no such file, trained again for the confirmed epochs."""
    path = checkpoint_file(folder, winner.trial_id, winner.seeds[0])
    if path.is_file():
        return trainer_at_best(read_checkpoint(path), str(path), dataset_for(base))
    candidate = Candidate(winner.trial_id, winner.params, winner.search_best)
    config = run_config(base, candidate, seed=winner.seeds[0], max_epochs=winner.epoch).replace(device="auto")
    trainer = Trainer(config, dataset_for(base), device="cpu")
    trainer.fit()
    return trainer


def export_best(
    folder: str | os.PathLike,
    *,
    records: list[TrialRecord] | None = None,
    quiet: bool = False,
    train_reference: bool = True,
) -> dict[str, Any]:
    """Write best/ (and trials.csv, unless `records` were just written) for the experiment in `folder`.

    The tutorial's reference comes from the confirmation (`confirm/tutorial.json`); without it, it is
    trained here when `train_reference` (tune.run, bound by its budget, says no: on a large data set
    its ten dense epochs take many minutes), else left out with the reason.
    """
    folder = Path(folder).resolve()
    if records is None:
        records = collect_and_write_trials(folder)
    experiment = read_experiment(folder)
    base = from_dict(experiment["base_config"], where=f"{folder} experiment.yaml (base_config)")
    confirmed = read_summary(folder)
    if confirmed:
        winner = confirmed[0]
        best = next(r for r in records if r.trial_id == winner.trial_id)
        trainer = confirmed_trainer(folder, base, winner)
    else:
        best = best_trial(records)
        trainer = best_trainer(folder, best)
    tutorial = reference_config(base)
    reference = read_reference(folder, tutorial.to_dict())
    if reference is None and train_reference:
        reference = tutorial_metrics(base, trainer.dataset)[1]
    # model_metrics rank by predicted rating; mf.recommend and mf.serve rank as chosen here, on val.
    choice = choose_ranking(FactorScorer.from_model(trainer.model), trainer.dataset)
    metrics: dict[str, Any] = {
        "trial_id": best.trial_id,
        "optuna_number": best.optuna_number,
        "epoch": trainer.epoch,
        **model_metrics(trainer, trainer.dataset),
        "params": best.params,
        "ranking": ranking_summary(choice),
        "search_best_val_mse": best.best_val_mse,
        "tutorial": {"config": tutorial.to_dict(), "epochs": tutorial.epochs, **(reference or {})},
    }
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

    write_export(folder / BEST_DIR, trainer, metrics, choice)
    if not quiet:
        print(format_export(metrics, folder / BEST_DIR))
    return metrics


def write_export(target: Path, trainer: Trainer, metrics: dict[str, Any], choice: RankingChoice) -> None:
    """config.yaml, metrics.json, model.pt and the served ranking in `target`, written into a fresh
    folder beside it and then swapped in: a crash leaves the old export whole."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write_yaml(staging / "config.yaml", trainer.config.to_dict())
        write_json(staging / METRICS_FILE, metrics)
        trainer.save_checkpoint(staging / "model.pt")
        write_ranking(staging, choice)  # what mf.recommend and mf.serve rank by
        old = target.parent / f".{target.name}-old"
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def export_best_ranking(
    folder: str | os.PathLike, *, records: list[TrialRecord] | None = None, quiet: bool = False
) -> dict[str, Any] | None:
    """Write best-ranking/ for the trial with the best val NDCG at any epoch; None (and nothing
    written) where the trials did not measure it.

    Trained again from the trial's configuration and seed to its best NDCG epoch, since its
    checkpoint holds the weights of its best val-MSE epoch; the training is deterministic on one
    device, and a retrained NDCG that differs from the search's is said.
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
    config = trial_config(base, best.params, settings.max_epochs, own_seed=settings.own_trial_seeds)
    config = config.replace(epochs=best.ndcg_epoch, device="auto")
    trainer = Trainer(config, dataset_for(base), device="cpu")
    trainer.fit()
    retrained = float(trainer.history[-1][VAL_NDCG])
    if abs(retrained - best.best_val_ndcg) > 1e-6:
        print(
            f"note: trial {best.trial_id}'s val NDCG at epoch {best.ndcg_epoch} was {best.best_val_ndcg:.4f} "
            f"in the search and {retrained:.4f} trained again here (another device or thread count)"
        )
    choice = choose_ranking(FactorScorer.from_model(trainer.model), trainer.dataset)
    metrics: dict[str, Any] = {
        "trial_id": best.trial_id,
        "optuna_number": best.optuna_number,
        "epoch": trainer.epoch,
        "objective": f"val NDCG@{base.val_ndcg_k}",
        "search_best_val_ndcg": best.best_val_ndcg,
        "retrained_val_ndcg": retrained,
        **model_metrics(trainer, trainer.dataset),
        "params": best.params,
        "ranking": ranking_summary(choice),
    }
    write_export(folder / BEST_RANKING_DIR, trainer, metrics, choice)
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


def format_export(metrics: dict[str, Any], where: Path) -> str:
    """Two lines: the exported model's held-out figures, and the tutorial's on the same split."""
    parts = [p for p in ("val", "test") if f"{p}_mse" in metrics]
    ours = ", ".join(f"{p}_mse {metrics[f'{p}_mse']:.4f}" for p in parts)
    tutorial = metrics["tutorial"]
    ref = tutorial.get("skipped") or ", ".join(f"{p}_mse {tutorial[f'{p}_mse']:.4f}" for p in parts)
    confirmation = metrics.get("confirmation")
    how = (
        f"confirmed over {fresh_seeds(len(confirmation['seeds']))}: val_mse {confirmation['val_mse_mean']:.4f} "
        f"± {confirmation['val_mse_sd']:.4f}"
        if confirmation
        else f"the search's best trial, val_mse {metrics['search_best_val_mse']:.4f}"
    )
    ranking = metrics.get("ranking", {})
    part = "test" if f"test_served_ndcg@{RANK_K}" in ranking else "val"
    ranked = (
        f"\n  ranked by {ranking['served']} ({ranking['file']}): {part} NDCG@{RANK_K} "
        f"{ranking[f'{part}_served_ndcg@{RANK_K}']:.4f}, most popular {ranking[f'{part}_popular_ndcg@{RANK_K}']:.4f}"
        if ranking
        else ""
    )
    return (
        f"exported {where}: trial {metrics['trial_id']}'s configuration, {metrics['epoch']} epochs ({how})\n"
        f"  the exported model: {ours}\n"
        f"  the tutorial's configuration on the same split: {ref}{ranked}"
    )


def format_ranking_export(metrics: dict[str, Any], where: Path) -> str:
    """One line: the trial best by val NDCG, its ranking on the held-out parts and its rating error."""
    ranking = metrics["ranking"]
    part = "test" if f"test_served_ndcg@{RANK_K}" in ranking else "val"
    return (
        f"exported {where}: trial {metrics['trial_id']}'s configuration by {metrics['objective']} "
        f"{metrics['search_best_val_ndcg']:.4f}, {metrics['epoch']} epochs; ranked by {ranking['served']}: "
        f"{part} NDCG@{RANK_K} {ranking[f'{part}_served_ndcg@{RANK_K}']:.4f}, most popular "
        f"{ranking[f'{part}_popular_ndcg@{RANK_K}']:.4f}; {part}_mse {metrics[f'{part}_mse']:.4f}"
    )


@user_errors_exit
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tune.export",
        description="Write <experiment>/best/ (config.yaml, metrics.json, model.pt), best-ranking/ "
        "where the trials measured val NDCG, and trials.csv.",
    )
    parser.add_argument("experiment", type=Path, help="experiment folder (e.g. runs/mf-tune)")
    args = parser.parse_args(argv)
    records = collect_and_write_trials(args.experiment.resolve())
    export_best(args.experiment, records=records)
    export_best_ranking(args.experiment, records=records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
