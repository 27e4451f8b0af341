"""`python -m mf.train`: train one configuration, print each epoch, save the model and its metrics.

Precedence: built-in defaults < `--config FILE` < `--data` and the per-key flags.

    python -m mf.train --data ../shared/data/ml-latest-small --l2 0.05 --epochs 20 --out runs/l2
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from pathlib import Path
from typing import Any

from mf.atomic import atomic_write_text, write_json, write_yaml
from mf.cli_args import add_config_flags, config_from_args
from mf.config import TrainConfig
from mf.errors import user_errors_exit
from mf.metrics import EPOCH, TRAIN_LOSS, VAL_MSE, VAL_RMSE, prefixed
from mf.training import Trainer, dataset_for


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `python -m mf.train`: --out, --quiet and the config flags."""
    parser = argparse.ArgumentParser(
        prog="python -m mf.train",
        description="Train MFAdvanced on MovieLens with one configuration.",
    )
    parser.add_argument("--out", type=Path, help="output folder (default: runs/train-<time>)")
    parser.add_argument("--quiet", action="store_true", help="do not print each epoch")
    add_config_flags(parser)
    return parser


def history_csv(history: list[dict[str, float]]) -> str:
    """Per-epoch metrics as CSV text, with a header of the first epoch's keys. `history` must not be
    empty (IndexError); an epoch with a key the first lacks raises ValueError, one without a key of
    the first has it written empty."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    return out.getvalue()


def train(config: TrainConfig, out: Path, *, quiet: bool = False) -> dict[str, Any]:
    """Train, writing config.yaml, history.csv, metrics.json and model.pt into `out`; return the
    metrics. With a val part the best epoch is reported beside the last; a config that trains on val
    (train_on: a refit) has none, and its epochs are the model.

    Args:
        config: the run's config.
        out: the output folder (created if missing).
        quiet: print nothing (else the data, each epoch and a summary).

    Returns:
        epochs, seconds and trained_on; with a val part the trained model's val metrics (val_mse, ...)
        and best_epoch / best_val_mse; with a test part the test metrics and test_ratings; and the
        unseen counts (`<part>_unseen`).

    Raises:
        ConfigError: for split settings the data layer rejects.
        DataError: where the data cannot be found, fetched or read.
        MFError: for `device: cuda` without a CUDA device.
        TrainingDiverged: where the loss becomes NaN or infinite.
        OSError: where the output files cannot be written.
    """
    dataset = dataset_for(config)
    trainer = Trainer(config, dataset)
    if not quiet:
        held = [
            f"{name} {len(p)}" for name, p in (("val", dataset.val), ("test", dataset.test)) if p is not None
        ]
        print(
            f"data {dataset.source}: {dataset.n_users} users, {dataset.n_items} items, "
            f"trained on {'+'.join(dataset.trained_on)} {len(dataset.train)}"
            + "".join(f", {h}" for h in held)
            + "".join(
                f" ({n} {part} ratings of unknown users or items left out)"
                for part, n in dataset.unseen.items()
                if n
            )
            + f"; device {trainer.device}"
        )
    write_yaml(out / "config.yaml", config.to_dict())
    started = time.perf_counter()

    def show(m: dict[str, float]) -> None:
        if not quiet:
            val = f"  val_mse {m[VAL_MSE]:.4f}  val_rmse {m[VAL_RMSE]:.4f}" if VAL_MSE in m else ""
            print(f"epoch {m[EPOCH]:3d}  train_loss {m[TRAIN_LOSS]:.4f}{val}")

    history = trainer.fit(on_epoch=show)
    seconds = time.perf_counter() - started
    metrics: dict[str, Any] = {"epochs": trainer.epoch, "seconds": round(seconds, 3)}
    metrics["trained_on"] = list(dataset.trained_on)
    if dataset.val is not None:
        best = min(history, key=lambda m: m[VAL_MSE])
        metrics.update(prefixed(trainer.evaluate("val"), "val"))
        metrics.update(best_epoch=best[EPOCH], best_val_mse=best[VAL_MSE])
    if dataset.test is not None:
        metrics.update(prefixed(trainer.evaluate("test"), "test"))
        metrics["test_ratings"] = len(dataset.test)
    metrics.update({f"{part}_unseen": n for part, n in dataset.unseen.items()})
    trainer.save_checkpoint(out / "model.pt")
    atomic_write_text(out / "history.csv", history_csv(history))
    write_json(out / "metrics.json", metrics)
    if not quiet:
        held = (
            f"val_mse {metrics['val_mse']:.4f} (best {metrics['best_val_mse']:.4f} at epoch {metrics['best_epoch']})"
            if dataset.val is not None
            else "no val part (trained on it)"
        )
        test = f", test_mse {metrics['test_mse']:.4f}" if "test_mse" in metrics else ""
        print(f"done in {seconds:.2f} s: {held}{test}; wrote {out}")
    return metrics


@user_errors_exit
def main(argv: list[str] | None = None) -> int:
    """`python -m mf.train`: train the command line's config and write the run's files.

    Args:
        argv: the command line after the program name (None: sys.argv's).

    Returns:
        0; 2 for a user's mistake (an MFError: a bad config, unreadable data, a diverging run),
        printed as one `error:` line. argparse exits with status 2 for flags it refuses.
    """
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    out = args.out or Path("runs") / time.strftime("train-%Y%m%d-%H%M%S")
    train(config, out, quiet=args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
