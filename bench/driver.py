"""`python -m bench.driver`: how many results and proposals a second one Tune driver handles.

Every result, every TPE proposal and every ASHA decision of an experiment goes through one driver.
This runs tune.run's own machinery (StudySearcher on a journal study, PersistentASHA, the trial
folder logger and checkpoint retention, the progress line) on trials whose epochs only sleep, with
Ray told it has many CPUs (`ray.init(num_cpus=N)`), so that N trials run at once whatever the
machine. Each trial reports a made-up val MSE every epoch (a falling curve whose floor depends on
its parameters), so that ASHA stops most of them and the searcher keeps proposing, as in a real run.

For each number of concurrent trials it prints the results and proposals handled a second, what
the trials asked for (N / epoch seconds results a second), and the median time a trial waited for
the driver after a report. Where the handled rate stops growing with N, the driver is saturated.
The trials' own processes share this machine's cores with the driver, so on a small machine the
figures are a floor for a driver with its cores to itself.

    python -m bench.driver                                  # 4, 8, 16, 32 trials at once, 60 s each
    python -m bench.driver --trials 8,64 --epoch-s 0.02 --seconds 30
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

EPOCH_S_DEFAULT = 0.05


def sleeping_trial(params: dict[str, Any], *, epoch_s: float, max_epochs: int) -> None:
    """A trainable that trains nothing: each epoch sleeps `epoch_s` and reports a made-up curve."""
    from ray import tune

    floor = 0.8 + 0.1 * abs(math.log10(params["lr"]) + 1.5) + 0.05 * abs(math.log10(params["l2"]) + 1.0)
    for epoch in range(1, max_epochs + 1):
        started = time.time()
        time.sleep(epoch_s)
        tune.report(
            {
                "epoch": epoch,
                "val_mse": floor + 0.5 / epoch,
                "epoch_started": started,
                "wall_time": time.time(),
            }
        )


def run_one(n_trials: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One level: tune.run's own Tuner (`build_tuner`: StudySearcher on a journal study,
    PersistentASHA, the trial folder logger, checkpoint retention, the progress line) on `n_trials`
    sleeping trials at once, in a Ray told it has that many CPUs."""
    import ray
    from ray import tune

    from search_spaces import load_space
    from tune._internals.ray import without_default_loggers
    from tune.extras.progress import ray_output
    from tune.search.experiment import build_tuner, create_study
    from tune.settings import ExperimentSettings

    settings = ExperimentSettings(
        name=f"n{n_trials}",
        storage_path=str(work),
        time_budget_s=args.seconds,
        num_samples=-1,
        max_epochs=args.max_epochs,
        grace_period=1,
        reduction_factor=3,
        max_concurrent=n_trials,
        confirm_top=0,  # the driver's load is the search's: nothing is confirmed or exported
    )
    folder = settings.experiment_dir
    folder.mkdir(parents=True)
    space = load_space("default")
    create_study(settings, space)
    ray.init(num_cpus=n_trials, include_dashboard=False, **ray_output(verbose=False).init_kwargs)
    trainable = tune.with_parameters(sleeping_trial, epoch_s=args.epoch_s, max_epochs=args.max_epochs)
    tuner = build_tuner(
        settings,
        tune.with_resources(trainable, {"cpu": 1}),
        space,
        seed=0,
        dataset=None,
        budget_s=args.seconds,
    )
    started = time.time()
    with without_default_loggers():
        tuner.fit()
    ray.shutdown()
    results, waits, epochs, ends = 0, [], 0, []
    for path in folder.glob("trial_*/result.json"):
        rows = [json.loads(line) for line in path.read_text().splitlines()]  # one per epoch
        epochs += len(rows)
        results += sum("training_iteration" in r for r in rows)  # Tune's keys: on the reports only
        ends += [r["wall_time"] for r in rows]
        # After a report, the trial's next epoch starts once the driver has handled it.
        waits += [
            b["epoch_started"] - a["wall_time"]
            for a, b in zip(rows, rows[1:], strict=False)
            if "training_iteration" in a
        ]
    wall = (max(ends) - started) if ends else args.seconds
    trials = len(list(folder.glob("trial_*")))
    return {
        "concurrent_trials": n_trials,
        "results_per_s": results / wall,
        "epochs_per_s": epochs / wall,
        "asked_epochs_per_s": n_trials / args.epoch_s,
        "proposals_per_s": trials / wall,
        "median_wait_ms": 1000 * statistics.median(waits) if waits else math.nan,
        "p90_wait_ms": 1000 * statistics.quantiles(waits, n=10)[-1] if len(waits) > 10 else math.nan,
        "trials": trials,
        "results": results,
        "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.driver", description=__doc__.split("\n")[0])
    parser.add_argument("--trials", default="4,8,16,32", help="concurrent trials to try (default 4,8,16,32)")
    parser.add_argument("--epoch-s", type=float, default=EPOCH_S_DEFAULT, help="a sleeping epoch's length")
    parser.add_argument("--max-epochs", type=int, default=27)
    parser.add_argument("--seconds", type=float, default=60.0, help="each run's budget (default 60)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--work-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:  # one level per process: Ray started afresh, nothing carried over
        row = run_one(args.child, args, args.work_dir)
        (args.work_dir / f"n{args.child}.json").write_text(json.dumps(row))
        return 0
    import subprocess

    levels = [int(n) for n in args.trials.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-driver-") as tmp:
        work = Path(tmp)
        print(
            f"bench.driver: sleeping epochs of {args.epoch_s * 1000:.0f} ms, max {args.max_epochs} epochs, "
            f"ASHA grace 1 rf 3, {args.seconds:g} s per level, {os.cpu_count()} CPUs",
            flush=True,
        )
        print(
            f"{'trials':>6} {'results/s':>9} {'epochs/s':>8} {'asked/s':>8} {'proposals/s':>11} {'wait p50 ms':>11} {'p90 ms':>7}"
        )
        for n in levels:
            cmd = [sys.executable, "-m", "bench.driver", "--child", str(n), "--work-dir", str(work)]
            cmd += ["--epoch-s", str(args.epoch_s), "--max-epochs", str(args.max_epochs)]
            cmd += ["--seconds", str(args.seconds)]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            r = json.loads((work / f"n{n}.json").read_text())
            rows.append(r)
            print(
                f"{n:6d} {r['results_per_s']:9.1f} {r['epochs_per_s']:8.1f} {r['asked_epochs_per_s']:8.0f} "
                f"{r['proposals_per_s']:11.2f} {r['median_wait_ms']:11.1f} {r['p90_wait_ms']:7.1f}",
                flush=True,
            )
    if args.json:
        args.json.write_text(
            json.dumps({"settings": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
