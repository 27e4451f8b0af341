"""The models the export starts from and the figures it computes: the chosen trial's or the
confirmation winner's model, its metrics on each held-out part, and the tutorial's reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mf.config import TrainConfig, from_dict, tutorial_config
from mf.data import Dataset
from mf.errors import MFError
from mf.metrics import prefixed
from mf.ranking import PREDICTED, RELEVANT_RATING, FactorScorer, Ranking
from mf.ranking_choice import BUDGET_CELLS, MAX_CELLS, evaluate_rankings, sample_users, users_to_score
from mf.training import Trainer, dataset_for, read_checkpoint
from tune.export.confirmation import Candidate, Confirmed, checkpoint_file, run_config
from tune.export.summary import RANK_K
from tune.record.results import TrialRecord
from tune.record.trial_files import newest_checkpoint

SPLIT_KEYS = ("data", "split", "val_n", "test_n", "val_fraction", "test_fraction", "seed", "split_seed")
"""The keys the tutorial's reference run shares with the experiment: the same ratings, the same split."""


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
