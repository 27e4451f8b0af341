"""The export's refit: the chosen configuration trained again on training + validation (and on
every rating with --refit all), as an average of --ensemble runs, within what is left of the budget."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from mf.config import TrainConfig
from mf.data import Dataset
from mf.metrics import EPOCH_SECONDS
from mf.ranking import FactorScorer
from mf.ranking_choice import MAX_CELLS, RankingChoice, carry_choice
from mf.training import Trainer
from tune.export.confirmation import REFIT_RUNS
from tune.export.models import model_metrics
from tune.record.results import TrialRecord


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
