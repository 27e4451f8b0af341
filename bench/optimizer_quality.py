"""`python -m bench.optimizer_quality`: does lazy_adamw train as well as dense AdamW?

On one data set and split (ml-latest-small, the tutorial's last-5 split by default), each config is
trained to `--epochs` without pruning by every variant, one after the other in this process:

  adamw          dense AdamW (the tutorial's optimiser)
  lazy_adamw     LazyAdamW as the trainer builds it (idle="dense": an idle row decays and coasts on
                 its momentum as under dense AdamW, paid when next touched; the default optimiser)
  lazy_decay     LazyAdamW, idle="decay": an idle row's weight decay is paid, its moments frozen
  lazy_none      LazyAdamW, idle="none": a row is decayed only at the steps that touch it

The configs: two hand-picked good ones (`HAND`), then `--configs` drawn at random (seeded) from a
search space's ranges (search_spaces/default.yaml: log-uniform where it says log). Printed: the
best val MSE of each variant on each hand config, and over the random configs each variant's best,
its median, and the median and spread of its difference to adamw config by config.

    python -m bench.optimizer_quality                         # 2 + 40 configs x 4 variants x 30 epochs
    python -m bench.optimizer_quality --configs 8 --epochs 10 --json q.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from mf.config import TrainConfig
from mf.metrics import VAL_MSE
from mf.optim import LazyAdamW
from mf.training import Trainer, dataset_for

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "ml-latest-small"
VARIANTS = ("adamw", "lazy_adamw", "lazy_decay", "lazy_none")
IDLE = {"lazy_decay": "decay", "lazy_none": "none"}
HAND: list[dict[str, Any]] = [
    {"emb_dim": 32, "lr": 0.034, "l2": 0.135, "weight_decay": 0.25, "init_range": 0.001},
    {"emb_dim": 32, "lr": 0.01, "l2": 0.135, "weight_decay": 0.25, "init_range": 0.001, "batch_size": 1024},
]


def sample_configs(space: Path, n: int, seed: int) -> list[dict[str, Any]]:
    """`n` configs drawn uniformly (log-uniformly where the space says log) from the space's ranges."""
    params = yaml.safe_load(space.read_text())["params"]
    rng = np.random.default_rng(seed)
    configs = []
    for _ in range(n):
        config: dict[str, Any] = {}
        for name, p in params.items():
            if p["type"] == "categorical":
                config[name] = p["choices"][int(rng.integers(len(p["choices"])))]
                continue
            low, high = float(p["low"]), float(p["high"])
            u = rng.random()
            x = (
                float(np.exp(np.log(low) + u * (np.log(high) - np.log(low))))
                if p.get("log")
                else low + u * (high - low)
            )
            config[name] = int(round(x)) if p["type"] == "int" else x
        configs.append(config)
    return configs


def train(base: TrainConfig, dataset: Any, params: dict[str, Any], variant: str) -> dict[str, float]:
    optimizer = "adamw" if variant == "adamw" else "lazy_adamw"
    config = base.replace(**params, optimizer=optimizer)
    trainer = Trainer(config, dataset)
    if variant in IDLE:
        users, items = trainer.model.row_tables()
        trainer.optimizers = [
            LazyAdamW(
                [users, items],
                trainer.model.dense_parameters(),
                lr=config.lr,
                weight_decay=config.weight_decay,
                idle=IDLE[variant],
            )
        ]
    started = time.perf_counter()
    try:
        history = trainer.fit()
    except Exception as e:  # a diverging config counts as failed for every variant alike
        return {"best": float("inf"), "best_epoch": 0, "last": float("inf"), "seconds": 0.0, "error": str(e)}
    best = min(history, key=lambda m: m[VAL_MSE])
    return {
        "best": best[VAL_MSE],
        "best_epoch": int(best["epoch"]),
        "last": history[-1][VAL_MSE],
        "seconds": time.perf_counter() - started,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.optimizer_quality", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--data", default=str(DEFAULT_DATA), help="data set (default ml-latest-small beside the repo)"
    )
    parser.add_argument("--space", type=Path, default=REPO / "search_spaces" / "default.yaml")
    parser.add_argument("--configs", type=int, default=40, help="random configs (default 40)")
    parser.add_argument("--epochs", type=int, default=30, help="epochs per config (default 30)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the configs drawn (default 0)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"some of {', '.join(VARIANTS)}")
    parser.add_argument("--json", type=Path, help="also write every run to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    if not variants or any(v not in VARIANTS for v in variants):
        raise SystemExit(f"error: --variants {args.variants!r}: expected some of {', '.join(VARIANTS)}")
    torch.set_num_threads(args.threads)
    base = TrainConfig(data=args.data, epochs=args.epochs, device="cpu", threads=args.threads)
    dataset = dataset_for(base)
    configs = [("hand", c) for c in HAND] + [
        ("random", c) for c in sample_configs(args.space, args.configs, args.seed)
    ]
    runs: list[dict[str, Any]] = []
    print(
        f"{len(configs)} configs x {len(variants)} variants x {args.epochs} epochs on {dataset.source}",
        flush=True,
    )
    for k, (kind, params) in enumerate(configs):
        row: dict[str, Any] = {"kind": kind, "params": params}
        for variant in variants:
            row[variant] = train(base, dataset, params, variant)
        runs.append(row)
        shown = " ".join(f"{v} {row[v]['best']:.4f}@{row[v]['best_epoch']}" for v in variants)
        print(f"   {k:3d} {kind:6} {shown}  {_short(params)}", flush=True)

    print("\n== hand-picked configs: best val MSE (epoch)")
    for row in (r for r in runs if r["kind"] == "hand"):
        print(
            "   " + "  ".join(f"{v} {row[v]['best']:.4f} ({row[v]['best_epoch']})" for v in variants),
            _short(row["params"]),
        )
    random_rows = [r for r in runs if r["kind"] == "random"]
    if random_rows:
        print(
            f"\n== {len(random_rows)} random configs from {args.space.name} (seed {args.seed}), best val MSE of each"
        )
        for v in variants:
            bests = [r[v]["best"] for r in random_rows]
            finite = [b for b in bests if np.isfinite(b)]
            line = f"   {v:13} best {min(bests):.4f}  median {statistics.median(finite):.4f}"
            if v != variants[0]:
                diffs = [
                    r[v]["best"] - r[variants[0]]["best"]
                    for r in random_rows
                    if np.isfinite(r[v]["best"] - r[variants[0]]["best"])
                ]
                q = np.quantile(diffs, [0.1, 0.5, 0.9])
                line += (
                    f"  minus {variants[0]} per config: median {q[1]:+.4f}, 10-90% {q[0]:+.4f}..{q[2]:+.4f}"
                )
            print(line)
        for v in variants:
            top = sorted(random_rows, key=lambda r: r[v]["best"])[:3]
            print(f"   top 3 by {v}: " + "; ".join(f"{r[v]['best']:.4f} {_short(r['params'])}" for r in top))
    if args.json:
        args.json.write_text(
            json.dumps({"variants": variants, "epochs": args.epochs, "runs": runs}, indent=1)
        )
    return 0


def _short(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


if __name__ == "__main__":
    sys.exit(main())
