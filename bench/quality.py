"""`python -m bench.quality`: is the model tune.run exports the best on data it never saw?

For each seed, one after the other on a quiet machine, each in a process of its own:

  ours    `python -m tune.run` (its defaults: confirmation, a held-out test part unless --test-n 0,
          the export refit on train + validation); the same run's chosen model before its refit
          (`train_only` in its metrics.json, what --refit none exports) is the row `ours-train`
  optuna  Optuna alone (bench.optuna_alone: TPE with the same seed + HyperbandPruner), its best
          trial's model as its users take it; `optuna-refit`, that configuration refit the same way

on the same data, split, search space and budget; then once, the hand grid: about a dozen sensible
configurations run to max_epochs without pruning (a careful person's afternoon). It prints a row per
seed and tool, the headline column first: the exported model's test MSE where the split has a test
part; then the confirmed mean (ours) and the search's best val MSE (a selection figure); the median
and the worst over seeds; and ours' paired difference by seed with each other row, its median with a
bootstrap interval over the seeds. Also the tutorial's configuration on the same split and, on the
planted data set, the oracle MSE (the truth's own error, the floor no model beats).

    python -m bench.quality                                 # ml-latest-small, 5 seeds x 2 x 420 s
    python -m bench.quality --test-n 0                      # the tutorial's split, no test part
    python -m bench.quality --data planted --budget-s 180   # the planted biased low-rank set
    python -m bench.quality --seeds 0,1 --budget-s 60 --only ours --tune-arg=--brackets --tune-arg=2
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "ml-latest-small"
TOOLS = ("ours", "optuna")

HAND_GRID: list[dict[str, Any]] = [
    # The tutorial's run, and the neighbourhoods a person who read the MF literature would try:
    # moderate width, an L2 penalty, AdamW's weight decay, small and large batches.
    {"emb_dim": 32, "lr": 0.005, "weight_decay": 0.01, "l2": 0.0, "batch_size": 8192, "optimizer": "adamw"},
    {"emb_dim": 32, "lr": 0.034, "l2": 0.135, "weight_decay": 0.25, "init_range": 0.001},
    {"emb_dim": 64, "lr": 0.03, "l2": 0.2, "weight_decay": 0.3, "init_range": 0.001},
    {"emb_dim": 128, "lr": 0.03, "l2": 0.135, "weight_decay": 0.25, "init_range": 0.001},
    {"emb_dim": 32, "lr": 0.01, "l2": 0.1, "weight_decay": 0.25, "init_range": 0.001, "batch_size": 1024},
    {"emb_dim": 64, "lr": 0.01, "l2": 0.1, "weight_decay": 0.25, "init_range": 0.001, "batch_size": 1024},
    {"emb_dim": 128, "lr": 0.01, "l2": 0.1, "weight_decay": 0.25, "init_range": 0.001, "batch_size": 1024},
    {"emb_dim": 16, "lr": 0.01, "l2": 0.05, "weight_decay": 0.25, "init_range": 0.001, "batch_size": 1024},
    {"emb_dim": 32, "lr": 0.01, "l2": 0.2, "weight_decay": 0.5, "init_range": 0.001, "batch_size": 1024},
    {"emb_dim": 32, "lr": 0.005, "l2": 0.05, "weight_decay": 0.1, "init_range": 0.001, "batch_size": 1024},
    {"emb_dim": 32, "lr": 0.02, "l2": 0.1, "weight_decay": 0.1, "init_range": 0.001, "batch_size": 2048},
    {"emb_dim": 32, "lr": 0.003, "l2": 0.02, "weight_decay": 0.01, "init_range": 0.01, "batch_size": 256},
]


@dataclass
class Row:
    tool: str
    seed: int | None
    best_val_mse: float | None
    """The search's best val MSE (its minimum over trials and epochs); the grid's best config's."""
    test_mse: float | None
    """The model's test MSE (where the split has a test part): the headline figure."""
    exported_val_mse: float | None = None
    """The val MSE of the chosen model before any refit (a selection figure)."""
    confirmed_val_mse: float | None = None
    """Ours: the exported config's mean val MSE over the confirmation's fresh seeds."""
    trials: int = 0
    epochs: int = 0
    seconds: float = 0.0


# ------------------------------------------------------------------ the runs
def split_keys(args: argparse.Namespace) -> dict[str, Any]:
    """The training keys that fix data and split, shared by every tool."""
    keys: dict[str, Any] = {"split": args.split}
    if args.split == "last-n":
        keys["test_n"] = args.test_n
    else:
        keys.update(val_fraction=args.val_fraction, test_fraction=args.test_fraction)
    return keys


def launch(cmd: list[str], log: Path) -> float:
    started = time.monotonic()
    with log.open("w") as out:
        done = subprocess.run(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise SystemExit(f"`{' '.join(cmd)}` exited {done.returncode}; last lines of {log}:\n{tail}")
    return time.monotonic() - started


def run_ours(args: argparse.Namespace, seed: int, work: Path) -> Row:
    storage, name = work / "ours", f"seed{seed}"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in split_keys(args).items()]
    cmd = [sys.executable, "-m", "tune.run", "--data", str(args.data), "--seed", str(seed), *flags]
    cmd += ["--space", args.space, "--max-epochs", str(args.max_epochs), "--num-samples", "-1"]
    cmd += ["--time-budget-s", str(args.budget_s), "--storage-path", str(storage), "--name", name]
    seconds = launch([*cmd, *args.tune_arg], work / f"ours-{seed}.log")
    folder = storage / name
    rows = list(csv.DictReader((folder / "trials.csv").open()))
    metrics = json.loads((folder / "best" / "metrics.json").read_text())
    chosen = metrics.get("train_only", metrics)  # the chosen run's own figures (no refit: the export's)
    ours = Row(
        tool="ours",
        seed=seed,
        best_val_mse=min(float(r["best_val_mse"]) for r in rows if r["best_val_mse"] not in ("", "nan")),
        test_mse=metrics.get("test_mse"),
        exported_val_mse=chosen.get("val_mse"),
        confirmed_val_mse=metrics.get("confirmation", {}).get("val_mse_mean"),
        trials=len(rows),
        epochs=sum(int(r["epochs"]) for r in rows),
        seconds=seconds,
    )
    rows_out = [ours]
    if "train_only" in metrics:
        rows_out.append(
            Row("ours-train", seed, ours.best_val_mse, chosen.get("test_mse"), chosen.get("val_mse"))
        )
    return rows_out, metrics


def run_optuna(args: argparse.Namespace, seed: int, work: Path) -> Row:
    config, out = work / "split.yaml", work / f"optuna-{seed}.json"
    config.write_text(yaml.safe_dump(split_keys(args)))
    cmd = [sys.executable, "-m", "bench.optuna_alone", "--data", str(args.data), "--config", str(config)]
    cmd += ["--space", args.space, "--max-epochs", str(args.max_epochs), "--budget-s", str(args.budget_s)]
    seconds = launch([*cmd, "--seed", str(seed), "--out", str(out)], work / f"optuna-{seed}.log")
    record = json.loads(out.read_text())
    best = record["best"]
    rows = [
        Row(
            tool="optuna",
            seed=seed,
            best_val_mse=best.get("val_mse"),
            test_mse=best.get("test_mse"),
            exported_val_mse=best.get("val_mse"),
            trials=len(record["curves"]),
            epochs=sum(len(c) for c in record["curves"]),
            seconds=seconds,
        )
    ]
    refit = record.get("refit") or {}
    if "test_mse" in refit:
        rows.append(Row("optuna-refit", seed, best.get("val_mse"), refit["test_mse"], best.get("val_mse")))
    return rows


def hand_grid(args: argparse.Namespace) -> dict[str, Any]:
    """The child: every hand configuration to max_epochs, no pruning; each one's best epoch."""
    from mf.config import TrainConfig
    from mf.metrics import prefixed
    from mf.training import Trainer, dataset_for

    base = TrainConfig(data=str(args.data), epochs=args.max_epochs, **split_keys(args))
    dataset = dataset_for(base)
    results = []
    for values in HAND_GRID:
        trainer = Trainer(base.replace(**values), dataset)
        trainer.fit()
        trainer.rewind_to_best()
        result = {"config": values, "epoch": trainer.epoch, "val_mse": trainer.best.val_mse}
        if dataset.test is not None:
            result.update(prefixed(trainer.evaluate("test"), "test"))
        results.append(result)
    out: dict[str, Any] = {"configs": results}
    if (Path(args.data) / "truth.npz").is_file():
        from bench.planted import read_truth

        truth = read_truth(Path(args.data))
        out["oracle_val_mse"] = truth.oracle_mse(dataset, "val")
        if dataset.test is not None:
            out["oracle_test_mse"] = truth.oracle_mse(dataset, "test")
    return out


def run_grid(args: argparse.Namespace, work: Path) -> tuple[Row, dict[str, Any]]:
    out = work / "grid.json"
    cmd = [sys.executable, "-m", "bench.quality", "--child-grid", str(out), "--data", str(args.data)]
    cmd += ["--max-epochs", str(args.max_epochs), "--split", args.split, "--test-n", str(args.test_n)]
    cmd += ["--val-fraction", str(args.val_fraction), "--test-fraction", str(args.test_fraction)]
    seconds = launch(cmd, work / "grid.log")
    record = json.loads(out.read_text())
    best = min(record["configs"], key=lambda r: r["val_mse"])
    row = Row("hand grid", None, best["val_mse"], best.get("test_mse"), best["val_mse"], seconds=seconds)
    row.trials, row.epochs = len(record["configs"]), len(record["configs"]) * args.max_epochs
    return row, record


# ------------------------------------------------------------------ the table
def _cell(value: float | None, width: int = 8) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}.4f}"


def format_rows(rows: list[Row]) -> list[str]:
    lines = [
        f"{'tool':12} {'seed':>4} {'test':>8} {'conf val':>8} {'best val':>8} {'trials':>6} {'epochs':>6} {'s':>5}"
    ]
    for r in rows:
        seed = "" if r.seed is None else str(r.seed)
        lines.append(
            f"{r.tool:12} {seed:>4} {_cell(r.test_mse)} {_cell(r.confirmed_val_mse)} {_cell(r.best_val_mse)}"
            f" {r.trials:6d} {r.epochs:6d} {r.seconds:5.0f}"
        )
    return lines


COLUMNS = ("test_mse", "confirmed_val_mse", "best_val_mse")
"""The summary's columns, the headline first: the best val MSE is a selection figure."""


def format_summary(rows: list[Row]) -> list[str]:
    """Median and worst over the seeds, per tool (lower is better for every column)."""
    lines = []
    for tool in dict.fromkeys(r.tool for r in rows if r.seed is not None):
        mine = [r for r in rows if r.tool == tool]
        for column in COLUMNS:
            values = [getattr(r, column) for r in mine if getattr(r, column) is not None]
            if values:
                lines.append(
                    f"{tool:12} {column:18} median {statistics.median(values):.4f}  worst {max(values):.4f}"
                    f"  best {min(values):.4f}  ({len(values)} seeds)"
                )
    return lines


def bootstrap_median(
    values: list[float], *, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """The median of `values` and a 95 % percentile-bootstrap interval of it (resampling the values,
    which are one per seed). With 5 seeds the interval is coarse: it can only land on the values."""
    rng = np.random.default_rng(seed)
    data = np.asarray(values, dtype=float)
    medians = np.median(rng.choice(data, size=(resamples, len(data)), replace=True), axis=1)
    return float(np.median(data)), float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))


def paired_differences(rows: list[Row], *, column: str = "test_mse", ours: str = "ours") -> list[str]:
    """Ours minus each other tool, seed by seed on `column` (negative: ours lower, better): the
    median with its bootstrap interval, and on how many seeds ours was lower."""
    by_tool: dict[str, dict[int, float]] = {}
    for r in rows:
        if r.seed is not None and getattr(r, column) is not None:
            by_tool.setdefault(r.tool, {})[r.seed] = getattr(r, column)
    mine = by_tool.get(ours, {})
    lines = []
    for tool, values in by_tool.items():
        seeds = sorted(set(mine) & set(values))
        if tool == ours or not seeds:
            continue
        diffs = [mine[s] - values[s] for s in seeds]
        median, lo, hi = bootstrap_median(diffs)
        better = sum(d < 0 for d in diffs)
        lines.append(
            f"{ours} - {tool:12} {column}: median {median:+.4f} [95% {lo:+.4f}, {hi:+.4f}]  "
            f"ours lower on {better} of {len(seeds)} seeds  ({', '.join(f'{d:+.4f}' for d in diffs)})"
        )
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="MovieLens data, or 'planted' (generated)")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds (default 0-4)")
    parser.add_argument(
        "--budget-s", type=float, default=420.0, help="wall-clock budget per run (default 420)"
    )
    parser.add_argument("--space", default="default")
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--split", default="last-n", choices=("last-n", "random"))
    parser.add_argument(
        "--test-n", type=int, default=5, help="last-n: test ratings per user (0: the tutorial's split)"
    )
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument("--only", default="ours,optuna,grid", help="of ours, optuna, grid (default all)")
    parser.add_argument("--tune-arg", action="append", default=[], help="an extra flag for tune.run (repeat)")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument("--work-dir", type=Path, help="keep the runs here (default: a temp dir)")
    parser.add_argument("--child-grid", type=Path, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child_grid:
        args.child_grid.write_text(json.dumps(hand_grid(args)))
        return 0
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    if not only or not only <= {*TOOLS, "grid"}:
        print(f"error: --only: {args.only!r} must list some of ours, optuna, grid", file=sys.stderr)
        return 2
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        work = (args.work_dir or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        if args.data == "planted":
            from bench.planted import write_planted

            args.data = work / "planted"
            if not (args.data / "ratings.csv").is_file():
                write_planted(args.data)
        args.data = Path(args.data).resolve()
        print(
            f"bench.quality: {args.data.name}, split {args.split} (test_n {args.test_n}), space {args.space}, "
            f"{args.budget_s:g} s per run, seeds {seeds}, {os.cpu_count()} CPUs, extra tune.run flags "
            f"{args.tune_arg or 'none'}",
            flush=True,
        )
        rows: list[Row] = []
        extra: dict[str, Any] = {"tutorial": {}}
        for seed in seeds:
            for tool in TOOLS:
                if tool not in only:
                    continue
                print(f"-- seed {seed}: {tool} (load average {os.getloadavg()[0]:.2f}) ...", flush=True)
                if tool == "ours":
                    new, metrics = run_ours(args, seed, work)
                    extra["tutorial"][seed] = {k: v for k, v in metrics["tutorial"].items() if k != "config"}
                else:
                    new = run_optuna(args, seed, work)
                rows += new
                for row in new:
                    print("   " + format_rows([row])[1], flush=True)
        if "grid" in only:
            print("-- hand grid ...", flush=True)
            row, extra["grid"] = run_grid(args, work)
            rows.append(row)
        print("\n".join(format_rows(rows)))
        print("\n".join(format_summary(rows)))
        column = "test_mse" if any(r.test_mse is not None for r in rows) else "best_val_mse"
        print("\n".join(paired_differences(rows, column=column)))
        grid = extra.get("grid", {})
        if "grid" in only:
            print(f"hand grid best of {len(grid['configs'])}: val {_cell(rows[-1].best_val_mse, 0)}")
        # With --confirm-top 0 the tutorial's reference run is skipped (it runs in the confirmation's share).
        tutorial = next((t for t in extra["tutorial"].values() if "val_mse" in t or "test_mse" in t), None)
        if tutorial:
            figures = [f"{p} {tutorial[f'{p}_mse']:.4f}" for p in ("test", "val") if f"{p}_mse" in tutorial]
            print(f"the tutorial's configuration on this split: {', '.join(figures)}")
        if "oracle_val_mse" in grid:
            print(
                f"oracle (the planted truth itself): val {grid['oracle_val_mse']:.4f}"
                + (f", test {grid['oracle_test_mse']:.4f}" if "oracle_test_mse" in grid else "")
            )
        if args.json:
            settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
            args.json.write_text(
                json.dumps({"settings": settings, "rows": [asdict(r) for r in rows], **extra}, indent=2)
                + "\n"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
