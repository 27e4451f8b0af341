"""`python -m bench.averaging`: does weight averaging (`swa_start`) help fixed configurations?

Each configuration of `CONFIGS` (good ones the searches found, a wide one, a low-lr one, a small-batch
one, and the tutorial's) is trained to `--epochs` without pruning, once per seed and per `swa_start`
value (0: no averaging), on a split with a test part. For each run the epoch with the best val MSE
is taken, as the search and the export take it, and its test MSE read: the test part is what no
selection saw. Printed: per configuration and `swa_start`, the median over seeds of the best val MSE
and of the test MSE at that epoch, and the seeds' test MSEs.

    python -m bench.averaging                                   # 6 configs x 3 seeds x 4 starts x 30 epochs
    python -m bench.averaging --seeds 0,1,2,3,4 --starts 0,6 --json averaging.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from mf.config import TrainConfig
from mf.metrics import VAL_MSE
from mf.training import Trainer, dataset_for

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "ml-latest-small"

CONFIGS: dict[str, dict[str, Any]] = {
    "good-32": {"emb_dim": 32, "lr": 0.06, "l2": 0.14, "weight_decay": 0.35, "init_range": 0.01},
    "good-8": {"emb_dim": 8, "lr": 0.075, "l2": 0.084, "weight_decay": 0.37, "init_range": 0.03},
    "wide-128": {"emb_dim": 128, "lr": 0.04, "l2": 0.15, "weight_decay": 0.3, "init_range": 0.003},
    "low-lr": {"emb_dim": 32, "lr": 0.01, "l2": 0.1, "weight_decay": 0.25, "init_range": 0.001},
    "batch-1024": {
        "emb_dim": 16,
        "lr": 0.01,
        "l2": 0.05,
        "weight_decay": 0.25,
        "init_range": 0.001,
        "batch_size": 1024,
    },
    "tutorial": {"emb_dim": 32, "lr": 0.005, "l2": 0.0, "weight_decay": 0.01, "init_range": 0.05},
}


def run(base: TrainConfig, dataset: Any, params: dict[str, Any], swa_start: int, seed: int) -> dict[str, Any]:
    """One unpruned run: its best epoch by val MSE, and the test MSE of the model kept there."""
    trainer = Trainer(base.replace(**params, swa_start=swa_start, seed=seed), dataset)
    trainer.fit()
    trainer.rewind_to_best()
    return {
        "epoch": trainer.epoch,
        VAL_MSE: trainer.best.val_mse,
        "test_mse": trainer.evaluate("test")["mse"],
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.averaging", description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--test-n", type=int, default=5, help="last-n test ratings per user (default 5)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0-2)")
    parser.add_argument("--starts", default="0,2,6,10", help="swa_start values; 0 is no averaging")
    parser.add_argument("--json", type=Path, help="also write every run to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.test_n < 1:
        print("error: --test-n: the comparison reads a test part, so it must be >= 1", file=sys.stderr)
        return 2
    seeds = [int(s) for s in args.seeds.split(",")]
    starts = [int(s) for s in args.starts.split(",")]
    base = TrainConfig(data=args.data, test_n=args.test_n, epochs=args.epochs, threads=1)
    dataset = dataset_for(base)
    print(f"bench.averaging: {dataset.source}, test_n {args.test_n}, {args.epochs} epochs, seeds {seeds}")
    print(f"{'config':11} {'swa_start':>9} {'val':>7} {'test':>7}  test per seed")
    runs: list[dict[str, Any]] = []
    for name, params in CONFIGS.items():
        for start in starts:
            mine = [{**run(base, dataset, params, start, seed), "seed": seed} for seed in seeds]
            runs += [{"config": name, "swa_start": start, **r} for r in mine]
            print(
                f"{name:11} {start:9d} {statistics.median(r[VAL_MSE] for r in mine):7.4f}"
                f" {statistics.median(r['test_mse'] for r in mine):7.4f}  "
                + " ".join(f"{r['test_mse']:.4f}@{r['epoch']}" for r in mine),
                flush=True,
            )
    if args.json:
        args.json.write_text(
            json.dumps({"settings": vars(args) | {"json": str(args.json)}, "runs": runs}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
