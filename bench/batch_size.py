"""`python -m bench.batch_size`: what an epoch costs at each batch size, one run after the other.

Small batches take many more optimiser steps a pass; what a step costs beyond its ratings decides
whether a search can afford them. Each batch size trains the same configuration (the default one,
on the data given) for `--epochs` epochs in this process, with torch's thread count as given; the
median epoch (the trainer's own `epoch_seconds`, validation included) is printed beside its ratio
to the largest batch's.

    python -m bench.batch_size                          # ml-latest-small, dim 32, 2 threads
    python -m bench.batch_size --threads 1 --batch-sizes 64,256,8192 --emb-dim 50 --data ml-100k
"""

from __future__ import annotations

import argparse
import statistics

import torch

from mf.config import TrainConfig
from mf.metrics import EPOCH_SECONDS
from mf.training import Trainer, dataset_for


def epoch_seconds(config: TrainConfig, dataset, epochs: int) -> list[float]:
    trainer = Trainer(config.replace(epochs=epochs), dataset)
    trainer.run_epoch()  # the first epoch compiles and warms the caches: not counted
    return [trainer.run_epoch()[EPOCH_SECONDS] for _ in range(epochs)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.batch_size", description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="ml-latest-small")
    parser.add_argument("--batch-sizes", default="64,256,1024,8192")
    parser.add_argument("--emb-dim", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=5, help="epochs timed per batch size (after one)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = TrainConfig(data=args.data, emb_dim=args.emb_dim, threads=args.threads)
    dataset = dataset_for(base)
    sizes = sorted(int(b) for b in args.batch_sizes.split(","))
    medians = {
        b: statistics.median(epoch_seconds(base.replace(batch_size=b), dataset, args.epochs)) for b in sizes
    }
    print(
        f"{dataset.source}: {len(dataset.train):,} training ratings, dim {args.emb_dim}, "
        f"{args.threads} threads, optimizer {base.optimizer}, median of {args.epochs} epochs"
    )
    for b in sizes:
        steps = -(-len(dataset.train) // b)
        print(
            f"  batch {b:6d}: {steps:6,d} steps, {medians[b] * 1e3:7.1f} ms an epoch, {medians[b] / medians[sizes[-1]]:.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
