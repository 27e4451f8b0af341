"""Published recipes for biased matrix factorisation, as data, and each run by the library it was
published with: the references a tuner is judged against.

A recipe selects nothing (its hyperparameters and training length are fixed in advance), so it
trains on training + validation, as tune.run's refit export does, and is read once on the test part
of the same split. Each run is a process of its own (`python -m bench.recipes`), so that one
library's threads and imports do not touch another's.

The libraries are not dependencies of mf-tune; bench/README.md says how to install them. Each is
run as its users run it: fastai's `collab_learner` + `fit_one_cycle` on a `TabularCollab` of the
split, Surprise's algorithm on a `Trainset` of it (predictions clipped to the rating scale, as
Surprise's `test` does), and the tutorial's configuration with mf-tune's own trainer.

    python -m bench.recipes --recipe fastai-collab --data ../shared/data/ml-100k --split random \\
        --test-fraction 0.1 --seed 0 --out fastai.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mf.config import TUTORIAL_RUN, TrainConfig, from_dict, read_values
from mf.data import Dataset, Interactions
from mf.metrics import regression_metrics
from mf.training import Trainer, dataset_for


@dataclass(frozen=True)
class Recipe:
    name: str
    source: str
    """Where it is published, with its hyperparameters as stated there."""
    library: str
    """What runs it: fastai, surprise, or mf-tune (our trainer, for the tutorial's own run)."""
    params: dict[str, Any] = field(default_factory=dict)


RECIPES: tuple[Recipe, ...] = (
    Recipe(
        "fastai-collab",
        "J. Howard and S. Gugger, Deep Learning for Coders with fastai and PyTorch (O'Reilly, 2020), ch. 8 "
        "(collaborative filtering): CollabDataLoaders(bs=64), collab_learner(n_factors=50, y_range=(0, 5.5)), "
        "fit_one_cycle(5, 5e-3, wd=0.1)",
        "fastai",
        {"bs": 64, "n_factors": 50, "y_range": (0.0, 5.5), "epochs": 5, "lr_max": 5e-3, "wd": 0.1},
    ),
    Recipe(
        "fastai-collab-mf",
        "fastai-collab's hyperparameters (as above: 50 factors, bs 64, one-cycle over 5 epochs to lr 5e-3, "
        "weight decay 0.1, sigmoid * 5.5) in mf-tune's trainer and model (init [0, 0.02], AdamW, a global "
        "offset): what the recipe gives the model this project tunes",
        "mf-tune",
        {
            "emb_dim": 50,
            "batch_size": 64,
            "epochs": 5,
            "lr_schedule": "one-cycle",
            "lr": 5e-3,
            "weight_decay": 0.1,
            "sigmoid_high": 5.5,
            "init_range": 0.02,
        },
    ),
    Recipe(
        "surprise-svd",
        "N. Hug, Surprise: a Python library for recommender systems, JOSS 5(52) 2174 (2020): SVD with its "
        "documented defaults (biased MF by SGD: n_factors=100, n_epochs=20, lr_all=0.005, reg_all=0.02, "
        "init_std_dev=0.1), the algorithm of its published MovieLens benchmark",
        "surprise",
        {"algo": "SVD"},
    ),
    Recipe(
        "surprise-svdpp",
        "N. Hug, Surprise (as above): SVD++ with its documented defaults (n_factors=20, n_epochs=20, "
        "lr_all=0.007, reg_all=0.02), the best matrix factorisation of its published MovieLens benchmark",
        "surprise",
        {"algo": "SVDpp"},
    ),
    Recipe(
        "tutorial",
        "the PyTorch tutorial this project's model comes from (MFAdvanced: dim 32, batch 8192, AdamW lr "
        "0.005, weight decay 0.01, init [0, 0.05], sigmoid * 5.5, 10 epochs)",
        "mf-tune",
        dict(TUTORIAL_RUN),
    ),
)
BY_NAME = {r.name: r for r in RECIPES}


def frames(dataset: Dataset) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The split as raw-id frames (user, item, rating): training + validation, and test."""

    def frame(part: Interactions) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "user": dataset.user_ids[part.users],
                "item": dataset.item_ids[part.items],
                "rating": part.ratings.astype(np.float64),
            }
        )

    refit = dataset.training_on("train+val")
    if refit.test is None:
        raise SystemExit("error: a recipe is judged on a test part; this split holds none")
    return frame(refit.train), frame(refit.test)


def run_fastai(recipe: Recipe, train: pd.DataFrame, test: pd.DataFrame, seed: int) -> np.ndarray:
    from fastai.collab import TabularCollab, collab_learner
    from fastai.tabular.all import Categorify, TransformBlock, set_seed

    p = recipe.params
    set_seed(seed, reproducible=True)
    ratings = pd.concat([train, test], ignore_index=True)
    ratings[["user", "item"]] = ratings[["user", "item"]].astype(str)
    splits = [list(range(len(train))), list(range(len(train), len(ratings)))]
    to = TabularCollab(
        ratings, [Categorify], ["user", "item"], y_names=["rating"], y_block=TransformBlock(), splits=splits
    )
    dls = to.dataloaders(bs=p["bs"])
    learn = collab_learner(dls, n_factors=p["n_factors"], y_range=tuple(p["y_range"]))
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(p["epochs"], p["lr_max"], wd=p["wd"])
    predicted, _ = learn.get_preds(dl=dls.valid)
    return predicted.numpy().reshape(-1)


def run_surprise(
    recipe: Recipe, train: pd.DataFrame, test: pd.DataFrame, seed: int, scale: tuple[float, float]
) -> np.ndarray:
    import surprise

    reader = surprise.Reader(rating_scale=scale)
    trainset = surprise.Dataset.load_from_df(train[["user", "item", "rating"]], reader).build_full_trainset()
    algo = getattr(surprise, recipe.params["algo"])(random_state=seed)
    algo.fit(trainset)
    rows = list(zip(test["user"], test["item"], test["rating"], strict=True))
    return np.array([p.est for p in algo.test(rows)])


def run_ours(recipe: Recipe, base: TrainConfig, dataset: Dataset, seed: int) -> np.ndarray:
    config = base.replace(
        **recipe.params, seed=seed, split_seed=base.effective_split_seed, train_on="train+val"
    )
    trainer = Trainer(config, dataset.training_on("train+val"))
    trainer.fit()
    return trainer.predict_part(trainer.test_part)


def run_recipe(recipe: Recipe, base: TrainConfig, seed: int) -> dict[str, Any]:
    """`recipe` trained on the split `base` names (its seed splits, `seed` seeds the training), read
    on the test part: its figures and seconds."""
    dataset = dataset_for(base)
    train, test = frames(dataset)
    started = time.monotonic()
    if recipe.library == "fastai":
        predicted = run_fastai(recipe, train, test, seed)
    elif recipe.library == "surprise":
        predicted = run_surprise(recipe, train, test, seed, dataset.rating_scale)
    else:
        predicted = run_ours(recipe, base, dataset, seed)
    figures = regression_metrics(test["rating"].to_numpy(), predicted)
    return {
        "recipe": recipe.name,
        "seed": seed,
        "test_mse": figures["mse"],
        "test_rmse": figures["rmse"],
        "test_mae": figures["mae"],
        "test_ratings": len(test),
        "trained_on": ["train", "val"],
        "seconds": time.monotonic() - started,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.recipes", description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", required=True, choices=list(BY_NAME))
    parser.add_argument("--data", required=True)
    parser.add_argument("--config", type=Path, help="YAML of the split's keys (split, test_n, ...)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the random split and the training")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    fixed = read_values(args.config) if args.config else {}
    base = from_dict({**fixed, "data": args.data, "seed": args.seed}, where="bench.recipes")
    result = run_recipe(BY_NAME[args.recipe], base, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
