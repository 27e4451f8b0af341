"""`python -m bench.tracking`: what MLflow tracking costs the search, ours against Ray's own callback.

Three `run_experiment` runs of the same budget on ml-latest-small, each in a process of its own, one
after the other: without tracking, with `--mlflow` (our callback: the driver buffers each trial's
epochs and a writer process makes the MLflow calls), and with Ray's `MLflowLoggerCallback` (which
makes them in the driver, at every result). The search only (no confirmation, no export); SQLite
stores in the run's folder, as `--mlflow` makes by default. Each variant's epochs, against the
untracked run of the same round (the rounds alternate the order). The space is the default's best
region at a fixed width and batch (bench/spaces/emb32.yaml), so that an epoch costs the same in
every trial and the epochs count what the driver let the trials do:

    python -m bench.tracking                        # 2 rounds of 3 x 120 s
    python -m bench.tracking --budget-s 30 --rounds 1 --only none,ours
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import DEFAULT_DATA, REPO, data_folder

VARIANTS = ("none", "ours", "ray")


def child(variant: str, work: Path, budget_s: float, data: str, space: str) -> dict[str, float]:
    """One run of `variant`; its epochs (a line each in the trials' result.json) and its seconds."""
    started = time.time()
    from search_spaces import load_space
    from tune import ExperimentSettings, experiment_config, run_experiment
    from tune.settings import RunOptions

    callbacks: tuple = ()
    if variant == "ray":
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        callbacks = (
            MLflowLoggerCallback(tracking_uri=f"sqlite:///{work / 'ray-mlflow.db'}", experiment_name=variant),
        )
    settings = ExperimentSettings(
        name=variant, storage_path=str(work), num_samples=-1, time_budget_s=budget_s, confirm_top=0
    )
    options = RunOptions(mlflow_uri="" if variant == "ours" else None, callbacks=callbacks, started=started)
    outcome = run_experiment(settings, experiment_config({"data": data}), load_space(space), options)
    epochs = sum(len(f.read_text().splitlines()) for f in outcome.experiment_dir.glob("trial_*/result.json"))
    return {"epochs": epochs, "seconds": time.time() - started}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tracking", description=__doc__.split("\n")[0])
    parser.add_argument("--budget-s", type=float, default=120.0, help="each run's budget (default 120)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the three runs (default 2)")
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--space", default=str(REPO / "bench" / "spaces" / "emb32.yaml"))
    parser.add_argument("--only", default=",".join(VARIANTS), help="of none, ours, ray (default all)")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--work-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    data = str(data_folder(args.data))
    if args.child:
        row = child(args.child, args.work_dir, args.budget_s, data, args.space)
        (args.work_dir / "row.json").write_text(json.dumps(row))
        return 0
    only = [v for v in VARIANTS if v in args.only.split(",")]
    if "none" not in only:
        parser.error("--only: the untracked run (none) is the reference")
    print(
        f"bench.tracking: {args.data}, {args.space}, {args.budget_s:g} s a run, {args.rounds} rounds",
        flush=True,
    )
    ratios: dict[str, list[float]] = {v: [] for v in only if v != "none"}
    for r in range(args.rounds):
        order = only if r % 2 == 0 else only[::-1]
        epochs = {}
        for variant in order:
            with tempfile.TemporaryDirectory(prefix="bench-tracking-") as tmp:
                cmd = [sys.executable, "-m", "bench.tracking", "--child", variant, "--work-dir", tmp]
                cmd += ["--budget-s", str(args.budget_s), "--data", data, "--space", args.space]
                subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
                row = json.loads((Path(tmp) / "row.json").read_text())
            epochs[variant] = row["epochs"]
            print(
                f"  round {r}: {variant:5s} {row['epochs']:6d} epochs in {row['seconds']:.0f} s", flush=True
            )
        for variant in ratios:
            ratios[variant].append(epochs[variant] / epochs["none"])
    for variant, values in ratios.items():
        print(
            f"{variant}: epochs against untracked, median {statistics.median(values):.3f} "
            f"(rounds: {', '.join(f'{v:.3f}' for v in values)})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
