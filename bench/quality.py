"""`python -m bench.quality`: is the model tune.run exports the best on data it never saw?

For each seed, one after the other on a quiet machine, each in a process of its own:

  ours     `python -m tune.run` (its defaults: confirmation, a held-out test part unless --test-n 0,
           the export refit on train + validation); the same run's chosen model before its refit
           (`train_only` in its metrics.json, what --refit none exports) is the row `ours-train`
  optuna   Optuna alone (bench.optuna_alone: TPE with the same seed + HyperbandPruner), its best
           trial's model as its users take it; `optuna-refit`, that configuration refit the same way
  recipes  each published recipe of bench.recipes (fastai's collab recipe, Surprise's SVD and SVD++,
           the tutorial's run), run by its own library on train + validation with the seed

on the same data, split (the seed splits a random one), search space and budget. It prints a row
per seed and tool, the headline column first: the test MSE where the split has a test part; then
the confirmed mean (ours) and the search's best val MSE (a selection figure); the median and the
worst over seeds; and ours' paired difference by seed with each other row, its median with a
bootstrap interval over the seeds, and against the best recipe by median. On the planted data set
it adds the oracle MSE (the truth's own error, the floor no model beats).

    python -m bench.quality                                 # ml-latest-small, 5 seeds, 420 s a run
    python -m bench.quality --data ../shared/data/ml-100k --split random --budget-s 300
    python -m bench.quality --data planted --budget-s 300   # the planted biased low-rank set
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

from bench import DEFAULT_DATA, REPO, data_folder
from bench.recipes import RECIPES, Recipe

TOOLS = ("ours", "optuna")
RECIPE_NAMES = tuple(r.name for r in RECIPES)


@dataclass
class Row:
    tool: str
    seed: int | None
    best_val_mse: float | None
    """The search's best val MSE (its minimum over trials and epochs); none for a recipe."""
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


def run_recipe(args: argparse.Namespace, recipe: str, seed: int, work: Path) -> list[Row]:
    config, out = work / "split.yaml", work / f"{recipe}-{seed}.json"
    config.write_text(yaml.safe_dump(split_keys(args)))
    cmd = [sys.executable, "-m", "bench.recipes", "--recipe", recipe, "--data", str(args.data)]
    cmd += ["--config", str(config), "--seed", str(seed), "--out", str(out)]
    seconds = launch(cmd, work / f"{recipe}-{seed}.log")
    return [Row(recipe, seed, None, json.loads(out.read_text())["test_mse"], seconds=seconds)]


def oracle(args: argparse.Namespace, seed: int) -> dict[str, float]:
    """On the planted set, the truth's own MSE on the seed's held-out parts."""
    from bench.planted import read_truth
    from mf.config import TrainConfig
    from mf.training import dataset_for

    truth = read_truth(Path(args.data))
    dataset = dataset_for(TrainConfig(data=str(args.data), seed=seed, **split_keys(args)))
    parts = ("val", "test") if dataset.test is not None else ("val",)
    return {f"oracle_{p}_mse": truth.oracle_mse(dataset, p) for p in parts}


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


def against_the_best_recipe(rows: list[Row], recipes: list[str], *, ours: str = "ours") -> list[str]:
    """Ours against the recipe whose median test MSE is lowest: the margin of ours' median below it,
    and whether ours' worst seed is below it too."""
    medians = {
        t: statistics.median(v)
        for t in (ours, *recipes)
        if (v := [r.test_mse for r in rows if r.tool == t and r.test_mse is not None])
    }
    if ours not in medians or len(medians) < 2:
        return []
    best = min((t for t in medians if t != ours), key=medians.get)
    worst = max(r.test_mse for r in rows if r.tool == ours and r.test_mse is not None)
    return [
        f"the best recipe by median: {best} {medians[best]:.4f}; ours' median {medians[ours]:.4f} "
        f"({medians[ours] - medians[best]:+.4f}), ours' worst {worst:.4f} ({worst - medians[best]:+.4f})"
    ]


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
    parser.add_argument(
        "--data",
        default=DEFAULT_DATA,
        help="MovieLens data (default: the bundled %(default)s), or 'planted' (generated)",
    )
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds (default 0-4)")
    parser.add_argument(
        "--budget-s", type=float, default=420.0, help="wall-clock budget per run (default 420)"
    )
    parser.add_argument("--space", default="default")
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--split", default="last-n", choices=("last-n", "random", "time"))
    parser.add_argument(
        "--test-n", type=int, default=5, help="last-n: test ratings per user (0: the tutorial's split)"
    )
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument(
        "--only",
        default=",".join((*TOOLS, *RECIPE_NAMES)),
        help=f"of {', '.join((*TOOLS, *RECIPE_NAMES))} (default all)",
    )
    parser.add_argument("--tune-arg", action="append", default=[], help="an extra flag for tune.run (repeat)")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument("--work-dir", type=Path, help="keep the runs here (default: a temp dir)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    if not only or not set(only) <= {*TOOLS, *RECIPE_NAMES}:
        print(
            f"error: --only: {args.only!r} must list some of {', '.join((*TOOLS, *RECIPE_NAMES))}",
            file=sys.stderr,
        )
        return 2
    missing = missing_libraries([r for r in RECIPES if r.name in only])
    if missing:
        print(
            f"error: the recipes need {', '.join(missing)}: see bench/README.md, the references",
            file=sys.stderr,
        )
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
        args.data = data_folder(str(args.data))  # a path, or a name fetched (the bundled data: no network)
        print(
            f"bench.quality: {args.data.name}, split {args.split} (test_n {args.test_n}, fractions "
            f"{args.val_fraction}/{args.test_fraction}), space {args.space}, {args.budget_s:g} s per run, "
            f"seeds {seeds}, {os.cpu_count()} CPUs, extra tune.run flags {args.tune_arg or 'none'}",
            flush=True,
        )
        rows: list[Row] = []
        extra: dict[str, Any] = {"tutorial": {}, "oracle": {}}
        for seed in seeds:
            for tool in only:
                print(f"-- seed {seed}: {tool} (load average {os.getloadavg()[0]:.2f}) ...", flush=True)
                if tool == "ours":
                    new, metrics = run_ours(args, seed, work)
                    extra["tutorial"][seed] = {k: v for k, v in metrics["tutorial"].items() if k != "config"}
                elif tool == "optuna":
                    new = run_optuna(args, seed, work)
                else:
                    new = run_recipe(args, tool, seed, work)
                rows += new
                for row in new:
                    print("   " + format_rows([row])[1], flush=True)
            if (args.data / "truth.npz").is_file():
                extra["oracle"][seed] = oracle(args, seed)
        print("\n".join(format_rows(rows)))
        print("\n".join(format_summary(rows)))
        column = "test_mse" if any(r.test_mse is not None for r in rows) else "best_val_mse"
        print("\n".join(paired_differences(rows, column=column)))
        print("\n".join(against_the_best_recipe(rows, [t for t in only if t in RECIPE_NAMES])))
        if extra["oracle"]:
            tests = [o["oracle_test_mse"] for o in extra["oracle"].values() if "oracle_test_mse" in o]
            vals = [o["oracle_val_mse"] for o in extra["oracle"].values()]
            print(
                f"oracle (the planted truth itself), median over the seeds' splits: val {statistics.median(vals):.4f}"
                + (f", test {statistics.median(tests):.4f}" if tests else "")
            )
        if args.json:
            settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
            args.json.write_text(
                json.dumps({"settings": settings, "rows": [asdict(r) for r in rows], **extra}, indent=2)
                + "\n"
            )
    return 0


def missing_libraries(recipes: list[Recipe]) -> list[str]:
    """The libraries `recipes` need that are not installed here."""
    import importlib.util

    return sorted(
        {r.library for r in recipes if r.library != "mf-tune" and importlib.util.find_spec(r.library) is None}
    )


if __name__ == "__main__":
    sys.exit(main())
