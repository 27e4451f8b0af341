"""`python -m bench.tuning`: tuning throughput of `tune.run` against Optuna alone and stock Ray Tune.

Three runs, one after the other, on the same data, split (the tutorial's last 5 per user), search
space, max epochs and wall-clock budget, each in a process of its own, so that imports, Ray's
start-up and the data load count against the run that needs them and no Ray state leaks between runs:

  a  `python -m tune.run` with its defaults (ASHA grace 2, rf 3; reused workers; the truthful searcher),
     but on the tutorial's split (`--test-n 0`) and without the confirmation (`--confirm-top 0`), so
     that the whole budget is search, as in b and c; `--tune-arg` adds flags (`--tune-arg=--mlflow`)
  b  Optuna alone: TPE (seed 0) + HyperbandPruner, one trial at a time in one process
  c  stock Ray Tune, as Ray's examples write it: a function trainable that checkpoints every epoch,
     `OptunaSearch` + `ASHAScheduler`, 1 CPU per trial, a new worker per trial (no reuse_actors)

    python -m bench.tuning                         # 3 x 420 s, about 22 minutes on 2 cores
    python -m bench.tuning --budget-s 30           # a quick check that all three run
    python -m bench.tuning --only a,c --json tuning.json
    python -m bench.tuning --space bench/spaces/emb32.yaml --budget-s 150 --only a --tune-arg=--mlflow

Every run's clock starts when its process is launched. Figures are read from what each run wrote
(Tune's result.json per trial for a and c, the child's own record for b), never from the tools' logs.
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import DEFAULT_DATA, REPO, data_folder
from mf.errors import MFError

if TYPE_CHECKING:  # the parent process imports neither torch nor Ray
    from mf.config import TrainConfig
    from mf.data import Dataset

RUNS = {"a": "tune.run (ours)", "b": "Optuna alone", "c": "stock Ray Tune"}
FRACTIONS = (0.25, 0.5, 1.0)
EXPERIMENT = "bench"  # the experiment name of runs a and c
CURVES_FILE = "curves.json"  # what the child of run b writes


@dataclass(frozen=True)
class Epoch:
    """One reported epoch: when it ended (epoch seconds), its val MSE, and the trainer's own time for it."""

    wall_time: float
    val_mse: float
    epoch_seconds: float


@dataclass(frozen=True)
class Figures:
    """One row of the table. `wall_s` runs from the process launch to the last epoch's end, so start-up
    counts and the clean-up after the budget (export, Ray shutdown) does not; `process_s` is all of it."""

    run: str
    trials: int
    epochs: int
    best_val_mse: float | None
    best_by: dict[str, float | None]
    """The best val MSE among the epochs that ended by 25 / 50 / 100 % of the budget; None: no epoch yet."""
    wall_s: float
    process_s: float
    train_s: float
    slots: int
    overhead_s_per_trial: float | None
    trials_per_hour: float
    epochs_per_hour: float


def figures(
    run: str, curves: list[list[Epoch]], *, started: float, ended: float, budget_s: float, slots: int
) -> Figures:
    """The table's figures for one run from its trials' epochs (a trial counts once it has one epoch)."""
    curves = [c for c in curves if c]
    epochs = [e for c in curves for e in c]
    wall = max((e.wall_time for e in epochs), default=started) - started
    train = sum(e.epoch_seconds for e in epochs)
    best_by = {
        f"{f:.0%}": min((e.val_mse for e in epochs if e.wall_time - started <= f * budget_s), default=None)
        for f in FRACTIONS
    }
    per_hour = 3600 / wall if wall > 0 else 0.0
    return Figures(
        run=run,
        trials=len(curves),
        epochs=len(epochs),
        best_val_mse=min((e.val_mse for e in epochs), default=None),
        best_by=best_by,
        wall_s=wall,
        process_s=ended - started,
        train_s=train,
        slots=slots,
        # The time each slot spent on anything but a trial's own epochs, shared out over the trials.
        overhead_s_per_trial=(slots * wall - train) / len(curves) if curves else None,
        trials_per_hour=len(curves) * per_hour,
        epochs_per_hour=len(epochs) * per_hour,
    )


def read_tune_experiment(folder: Path) -> list[list[Epoch]]:
    """Each trial's epochs from Tune's `<trial>/result.json` (one JSON line per report).

    A diverged trial's last report of run a carries no epoch_seconds: it trained nothing more.
    """
    curves = []
    for path in sorted(folder.glob("*/result.json")):
        curve = []
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if "epoch_seconds" in r and "wall_time" in r:
                curve.append(Epoch(float(r["wall_time"]), float(r["val_mse"]), float(r["epoch_seconds"])))
        curves.append(curve)
    return curves


def check_trials_csv(folder: Path, curves: list[list[Epoch]]) -> dict[str, int]:
    """Outcome counts from tune.run's own trials.csv, and a warning if it disagrees with result.json."""
    rows = list(csv.DictReader((folder / "trials.csv").open()))
    counts = {k: sum(r["outcome"] == k for r in rows) for k in ("COMPLETE", "PRUNED", "FAIL")}
    with_epochs = [r for r in rows if int(r["epochs"]) >= 1]
    trained = sum(bool(c) for c in curves)
    if len(with_epochs) != trained:  # e.g. a trial that diverged in its first epoch
        print(f"   note: trials.csv has {len(with_epochs)} trials with epochs, result.json {trained}")
    return counts


# ------------------------------------------------------------------ the three runs, each a process
def launch(cmd: list[str], log: Path) -> tuple[float, float]:
    """Run `cmd` from the repo root with its output in `log`; return its launch and end times."""
    started = time.time()
    with log.open("w") as out:
        done = subprocess.run(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, check=False)
    ended = time.time()
    if done.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise MFError(f"`{' '.join(cmd)}` exited {done.returncode}; last lines of {log}:\n{tail}")
    return started, ended


def common_flags(args: argparse.Namespace) -> list[str]:
    return ["--data", str(args.data), "--space", args.space, "--max-epochs", str(args.max_epochs)]


def run_ours(args: argparse.Namespace, work: Path) -> tuple[Figures, dict[str, Any]]:
    storage = work / "a"
    cmd = [sys.executable, "-m", "tune.run", "--num-samples", "-1", "--time-budget-s", str(args.budget_s)]
    cmd += ["--storage-path", str(storage), "--name", EXPERIMENT, *common_flags(args)]
    # The tutorial's split, as the other two runs use, and the whole budget for the search.
    cmd += ["--test-n", "0", "--confirm-top", "0", *args.tune_arg]
    started, ended = launch(cmd, work / "a.log")
    curves = read_tune_experiment(storage / EXPERIMENT)
    outcomes = check_trials_csv(storage / EXPERIMENT, curves)
    slots = os.cpu_count() or 1  # tune.run runs as many 1-CPU trials as local Ray has CPUs
    row = figures("a", curves, started=started, ended=ended, budget_s=args.budget_s, slots=slots)
    return row, {"outcomes": outcomes}


def run_child(run: str, args: argparse.Namespace, work: Path) -> tuple[float, float, Path]:
    out = work / run
    cmd = [sys.executable, "-m", "bench.tuning", "--child", run, "--work-dir", str(out)]
    cmd += [*common_flags(args), "--budget-s", str(args.budget_s)]
    started, ended = launch(cmd, work / f"{run}.log")
    return started, ended, out


def run_optuna_alone(args: argparse.Namespace, work: Path) -> tuple[Figures, dict[str, Any]]:
    started, ended, out = run_child("b", args, work)
    record = json.loads((out / CURVES_FILE).read_text())
    curves = [[Epoch(**e) for e in c] for c in record["curves"]]
    row = figures("b", curves, started=started, ended=ended, budget_s=args.budget_s, slots=1)
    return row, {"outcomes": record["states"], "torch_threads": record["torch_threads"]}


def run_stock_ray(args: argparse.Namespace, work: Path) -> tuple[Figures, dict[str, Any]]:
    started, ended, out = run_child("c", args, work)
    curves = read_tune_experiment(out / EXPERIMENT)
    slots = os.cpu_count() or 1  # Ray's local default: as many 1-CPU trials as CPUs
    return figures("c", curves, started=started, ended=ended, budget_s=args.budget_s, slots=slots), {}


# ------------------------------------------------------------------ children: b and c themselves
def optuna_alone(args: argparse.Namespace) -> None:
    """Run b: bench.optuna_alone, TPE (seed 0) + HyperbandPruner, as an Optuna user writes it."""
    from bench.optuna_alone import optuna_alone as run_optuna_alone
    from mf.config import TrainConfig

    run = run_optuna_alone(
        TrainConfig(data=str(args.data)),
        space=args.space,
        max_epochs=args.max_epochs,
        budget_s=args.budget_s,
        seed=0,
    )
    record = {
        "curves": run.curves,
        "states": run.states,
        "params": run.params,
        "torch_threads": run.torch_threads,
    }
    args.work_dir.mkdir(parents=True, exist_ok=True)
    (args.work_dir / CURVES_FILE).write_text(json.dumps(record))


def train_mf(config: dict[str, Any], *, data: Dataset, base: TrainConfig, max_epochs: int) -> None:
    """Run c's trainable, as Ray's examples write one: build, resume if asked, report and checkpoint
    every epoch. `wall_time` is added so that the benchmark can place each epoch in time."""
    from ray import tune

    from bench.optuna_alone import trial_config
    from mf.training import Trainer, read_checkpoint

    trainer = Trainer(trial_config(base, config, max_epochs), data)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            trainer.load_state(read_checkpoint(Path(folder) / "state.pt"))
    while trainer.epoch < trainer.config.epochs:  # its own length, where the space tunes it
        metrics = trainer.run_epoch()
        with tempfile.TemporaryDirectory() as folder:
            trainer.save_checkpoint(Path(folder) / "state.pt", fsync=False)
            tune.report(
                {**metrics, "wall_time": time.time()}, checkpoint=tune.Checkpoint.from_directory(folder)
            )


def stock_ray_tune(args: argparse.Namespace) -> None:
    """Run c: stock OptunaSearch and ASHAScheduler, Tune's defaults for everything else."""
    import optuna
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from mf.config import TrainConfig
    from mf.metrics import EPOCH, VAL_MSE
    from mf.training import dataset_for
    from search_spaces import load_space

    ray.init()  # a plain local Ray, as a user gets it (with the dashboard, where installed)
    base = TrainConfig(data=str(args.data))
    dataset = dataset_for(base)
    trainable = tune.with_parameters(train_mf, data=dataset, base=base, max_epochs=args.max_epochs)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        tune_config=tune.TuneConfig(
            # metric/mode on the searcher (OptunaSearch with a space wants them) and the scheduler
            search_alg=OptunaSearch(
                space=load_space(args.space).to_optuna(),
                metric=VAL_MSE,
                mode="min",
                sampler=optuna.samplers.TPESampler(seed=0),
            ),
            scheduler=ASHAScheduler(
                metric=VAL_MSE,
                mode="min",
                time_attr=EPOCH,
                max_t=args.max_epochs,
                grace_period=2,
                reduction_factor=3,
            ),
            num_samples=-1,
            time_budget_s=args.budget_s,
        ),
        run_config=tune.RunConfig(name=EXPERIMENT, storage_path=str(args.work_dir)),
    )
    tuner.fit()
    ray.shutdown()


# ------------------------------------------------------------------ table and command line
def _cell(value: float | None, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}.{digits}f}"


def format_table(rows: list[Figures], budget_s: float) -> str:
    by = " ".join(f"{'@' + f'{f:.0%}':>7}" for f in FRACTIONS)
    lines = [
        f"{'run':16} {'trials':>6} {'epochs':>6} {'best':>7} {by} {'wall s':>7} {'train s':>7} {'slots':>5}"
        f" {'ovh s/trial':>11} {'trials/h':>8} {'epochs/h':>8} {'proc s':>7}"
    ]
    for r in rows:
        best_by = " ".join(_cell(v, 7, 4) for v in r.best_by.values())
        lines.append(
            f"{RUNS[r.run]:16} {r.trials:6d} {r.epochs:6d} {_cell(r.best_val_mse, 7, 4)} {best_by} {r.wall_s:7.1f}"
            f" {r.train_s:7.1f} {r.slots:5d} {_cell(r.overhead_s_per_trial, 11, 2)} {r.trials_per_hour:8.0f}"
            f" {r.epochs_per_hour:8.0f} {r.process_s:7.1f}"
        )
    lines.append(f"(@N%: best val MSE reached by N% of the {budget_s:g} s budget, from the run's launch)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.tuning", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data",
        type=data_folder,
        default=DEFAULT_DATA,
        help="MovieLens data (default: the bundled %(default)s)",
    )
    parser.add_argument("--space", default="default", help="search space (default: %(default)s)")
    parser.add_argument(
        "--max-epochs", type=int, default=30, help="epochs of an unstopped trial (default: 30)"
    )
    parser.add_argument(
        "--budget-s", type=float, default=420.0, help="wall-clock budget per run (default: 420)"
    )
    parser.add_argument("--only", default="a,b,c", help="runs to do, of a,b,c (default: all)")
    parser.add_argument("--tune-arg", action="append", default=[], help="an extra flag for run a (repeat)")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument(
        "--work-dir", type=Path, help="keep the runs' folders and logs here (default: a temp dir)"
    )
    parser.add_argument("--child", choices=("b", "c"), help=argparse.SUPPRESS)  # internal: run b or c itself
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child == "b":
        optuna_alone(args)
        return 0
    if args.child == "c":
        stock_ray_tune(args)
        return 0
    only = [r.strip() for r in args.only.split(",") if r.strip()]
    if not only or any(r not in RUNS for r in only):
        print(f"error: --only: {args.only!r} must list runs among a, b, c (e.g. a,c)", file=sys.stderr)
        return 2
    if not args.data.exists():
        print(f"error: --data: {args.data} does not exist; give a MovieLens folder", file=sys.stderr)
        return 2
    if args.max_epochs < 2 or args.budget_s <= 0:
        print(
            f"error: --max-epochs {args.max_epochs} / --budget-s {args.budget_s:g}: need >= 2 (ASHA's grace"
            " period is 2) and > 0",
            file=sys.stderr,
        )
        return 2
    try:
        from search_spaces import load_space

        load_space(args.space)  # a bad --space fails here, not minutes later in a child
    except MFError as e:
        print(f"error: --space: {e}", file=sys.stderr)
        return 2
    args.data = args.data.resolve()
    with tempfile.TemporaryDirectory(prefix="bench-tuning-") as tmp:
        work = (args.work_dir or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        print(
            f"bench.tuning: {args.data.name}, space {args.space}, max {args.max_epochs} epochs,"
            f" {args.budget_s:g} s per run, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
        )
        do = {"a": run_ours, "b": run_optuna_alone, "c": run_stock_ray}
        rows, extra = [], {}
        for run in only:
            load = os.getloadavg()[0]  # the machine may be shared: a busy one slows every run
            print(f"-- {run}: {RUNS[run]} (load average {load:.2f}) ...", flush=True)
            try:
                row, extra[run] = do[run](args, work)
            except MFError as e:
                print(f"error: run {run}: {e}", file=sys.stderr)
                return 1
            extra[run]["load_average_at_start"] = load
            rows.append(row)
            print(
                f"   {row.trials} trials, {row.epochs} epochs, best val MSE {_cell(row.best_val_mse, 0, 4)}",
                flush=True,
            )
        print(format_table(rows, args.budget_s))
        if args.json:
            settings = {
                k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "child"
            }
            runs = {r.run: {**asdict(r), **extra[r.run]} for r in rows}
            args.json.write_text(json.dumps({"settings": settings, "runs": runs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
