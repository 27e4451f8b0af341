"""`python -m bench.gpu`: the GPU figures issue 13 asks for, in one run of under 10 minutes.

1. Trainer throughput on CUDA: ratings/s per optimiser path (adamw, sparse_adam, lazy_adamw) at
   10M and 25M synthetic ratings (bench.trainer's scale part: one process per size, dim 32, batch
   8192, epochs interleaved; the data moved to the GPU once, the shuffle drawn there).
2. Trials per hour on ml-latest-small with 1, 4 and 8 trials sharing the GPU: `python -m tune.run
   --num-samples -1 --time-budget-s B --gpus-per-trial G` for G = 1, 0.25, 0.125, each a fresh run
   (trials that trained an epoch, from trials.csv, per hour of the budget; epochs likewise).

    python -m bench.gpu --json gpu.json                  # ~8 minutes on one GPU
    python -m bench.gpu --smoke                          # CPU, tiny sizes, 45 s runs: checks it runs
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench import DEFAULT_DATA, REPO
from bench.trainer import SCALE_PATHS, scale


def trials_per_hour(
    data: str, *, gpus_per_trial: float, budget_s: float, storage: Path, extra: list[str]
) -> dict[str, Any]:
    name = f"gpu-{gpus_per_trial:g}".replace(".", "p")
    cmd = [sys.executable, "-m", "tune.run", "--data", data, "--num-samples", "-1"]
    cmd += ["--time-budget-s", str(budget_s), "--gpus-per-trial", str(gpus_per_trial)]
    cmd += ["--storage-path", str(storage), "--name", name, "--no-export", *extra]
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    wall_s = time.perf_counter() - started
    trials_csv = storage / name / "trials.csv"
    rows = list(csv.DictReader(trials_csv.open())) if trials_csv.is_file() else []
    epochs = [int(r.get("epochs") or 0) for r in rows]
    trials = sum(e > 0 for e in epochs)
    result = {
        "gpus_per_trial": gpus_per_trial,
        "exit": done.returncode,
        "wall_s": wall_s,
        "budget_s": budget_s,
        "trials": trials,
        "epochs": sum(epochs),
        "trials_per_hour": trials * 3600 / budget_s,
        "epochs_per_hour": sum(epochs) * 3600 / budget_s,
        "best_val_mse": min((float(r["best_val_mse"]) for r in rows if r.get("best_val_mse")), default=None),
    }
    if done.returncode != 0 or not rows:
        result["stderr_tail"] = done.stderr.strip()[-1500:]
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="the tuning runs' data (default: %(default)s)")
    parser.add_argument("--sizes", default="10000000,25000000", help="synthetic sizes of part 1 (10M, 25M)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per path and size in part 1 (2)")
    parser.add_argument("--budget-s", type=float, default=100.0, help="each tuning run's budget (100 s)")
    parser.add_argument("--shares", default="1,0.25,0.125", help="--gpus-per-trial values (1,0.25,0.125)")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-tuning", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and 45 s runs, on CPU if no GPU")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("extra", nargs="*", help="after --: more tune.run flags")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cuda = torch.cuda.is_available()
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    shares = [float(s) for s in args.shares.split(",")]
    if args.smoke:
        sizes, args.epochs, args.budget_s = [100_000], 1, 45.0
        shares = shares if cuda else [0.0]  # no GPU: one CPU run checks the tuning part
    elif not cuda:
        raise SystemExit("error: no CUDA device; run this on a GPU machine, or --smoke to check it on CPU")
    result: dict[str, Any] = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "cuda": torch.version.cuda,
        "cpus": os.cpu_count(),
    }
    print(
        f"bench.gpu on {result['device']} (torch {result['torch']}, CUDA {result['cuda']}, {result['cpus']} CPUs)"
    )
    started = time.perf_counter()
    if not args.skip_throughput:
        result["throughput"] = scale(sizes=sizes, paths=list(SCALE_PATHS), epochs=args.epochs)
        print(f"   part 1 took {time.perf_counter() - started:.0f} s", flush=True)
    if not args.skip_tuning:
        print(f"\n== trials per hour on {args.data}, {args.budget_s:.0f} s per run")
        print(
            f"   {'gpus/trial':>10} {'trials':>7} {'epochs':>7} {'trials/h':>9} {'epochs/h':>9} {'best':>7} {'wall s':>7}"
        )
        runs = []
        with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
            for share in shares:
                r = trials_per_hour(
                    args.data,
                    gpus_per_trial=share,
                    budget_s=args.budget_s,
                    storage=Path(tmp),
                    extra=args.extra,
                )
                runs.append(r)
                best = f"{r['best_val_mse']:.4f}" if r["best_val_mse"] is not None else "-"
                print(
                    f"   {share:10g} {r['trials']:7d} {r['epochs']:7d} {r['trials_per_hour']:9.0f}"
                    f" {r['epochs_per_hour']:9.0f} {best:>7} {r['wall_s']:7.0f}"
                    + (f"  (exit {r['exit']})" if r["exit"] else ""),
                    flush=True,
                )
                if "stderr_tail" in r:
                    print("      " + r["stderr_tail"].replace("\n", "\n      ")[-800:])
        result["tuning"] = runs
    print(f"\nbench.gpu done in {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
