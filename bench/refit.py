"""`python -m bench.refit`: what refitting an experiment's chosen configuration is worth, and how long.

For each experiment folder (tune.run's, or a `bench.quality --work-dir`'s), its exported
configuration (best/config.yaml, whatever it was trained on) is trained from scratch with fresh
seeds, each seed three ways, all read on the test part at their last epoch (nothing is chosen on
test):

  train          on the training part, for the chosen epochs: what --refit none exports
  epochs         on train + validation, for the same epochs (each a pass over the larger part)
  steps          on train + validation, for the same optimiser steps (each epoch as many ratings
                 as the training part holds: epoch_ratings), so that a learning-rate schedule and
                 the weight decay per step are the chosen run's exactly
  ensemble       as `epochs`, the average of --ensemble such runs (TrainConfig.ensemble; default
                 tune.run's --ensemble): what the export exports

and prints each one's median and worst over the seeds, and the paired differences.

    python -m bench.refit runs/mf-tune --seeds 0,1,2,3,4
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from mf.config import load_config
from mf.training import Trainer, dataset_for
from tune.settings import ExperimentSettings

RULES = ("train", "epochs", "steps", "ensemble")


def test_mse(config, dataset) -> float:
    trainer = Trainer(config, dataset.training_on(config.train_on))
    trainer.fit()
    return trainer.evaluate("test")["mse"]


def refit_rules(folder: Path, seeds: list[int], ensemble: int) -> dict[str, list[float]]:
    """Test MSE per rule and seed of the experiment's exported configuration."""
    chosen = load_config(folder / "best" / "config.yaml").replace(train_on="train", ensemble=1, device="cpu")
    dataset = dataset_for(chosen)
    configs = {
        "train": chosen,
        "epochs": chosen.replace(train_on="train+val"),
        "steps": chosen.replace(
            train_on="train+val", epoch_ratings=chosen.epoch_ratings or len(dataset.train)
        ),
        "ensemble": chosen.replace(train_on="train+val", ensemble=ensemble),
    }
    return {rule: [test_mse(configs[rule].replace(seed=1000 + s), dataset) for s in seeds] for rule in RULES}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.refit", description=__doc__.split("\n")[0])
    parser.add_argument("experiments", nargs="+", type=Path, help="experiment folders with a best/")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="fresh seeds (1000 + each)")
    parser.add_argument(
        "--ensemble", type=int, default=ExperimentSettings().ensemble, help="runs the ensemble rule averages"
    )
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    print(
        f"{'experiment':40} {'rule':7} "
        + " ".join(f"{'seed ' + str(s):>8}" for s in seeds)
        + "   median    worst"
    )
    diffs: dict[str, list[float]] = {"epochs": [], "steps": [], "steps - epochs": [], "ensemble - epochs": []}
    for folder in args.experiments:
        figures = refit_rules(folder, seeds, args.ensemble)
        for rule in RULES:
            values = figures[rule]
            cells = " ".join(f"{v:8.4f}" for v in values)
            print(
                f"{str(folder)[-40:]:40} {rule:7} {cells}   {statistics.median(values):.4f}   {max(values):.4f}"
            )
        for rule in ("epochs", "steps"):
            diffs[rule] += [r - t for r, t in zip(figures[rule], figures["train"], strict=True)]
        for rule in ("steps", "ensemble"):
            diffs[f"{rule} - epochs"] += [
                a - b for a, b in zip(figures[rule], figures["epochs"], strict=True)
            ]
    for name, values in diffs.items():
        label = name if " - " in name else f"{name} - train"
        lower = sum(v < 0 for v in values)
        print(f"{label:16} median {statistics.median(values):+.4f}  lower on {lower} of {len(values)} runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
