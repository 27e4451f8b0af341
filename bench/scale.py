"""`python -m bench.scale`: tune.run on a 25M-rating ml-25m-layout file, for a fixed budget.

1. Generates `ratings.csv` once (bench/synthetic.py's shape: ~400k users, ~150k movies at 25M) into
   the work folder, `~/.cache/mf-tune/bench` by default; later runs reuse it.
2. Times `prepare_dataset` on it (the random split tune.run uses) in a process of its own, with that
   process's peak RSS, so the load is measured alone.
3. Runs `python -m tune.run --data <folder> --split random --val-fraction 0.01 --num-samples -1
   --time-budget-s B` as it is (only the CLI; any further flags after `--` are passed on), polling
   its process tree every `--poll-s`: RSS and PSS of the driver, of each Ray worker and of Ray's own
   processes. PSS is the total to trust: RSS counts the shared object store (the data set, mapped
   by every worker) once per process.
4. Reads the experiment's trials.csv: trials, epochs, and how many trials reached ASHA's first rung
   (`epochs >= --grace-period`).

Targets (2 cores): the load < 60 s, all processes < 8 GB together (PSS), >= 30 trials at the first rung.

    python -m bench.scale                                # 25M ratings, 600 s of tune.run (~12 minutes)
    python -m bench.scale --smoke                        # 200k ratings, 45 s: checks that it all runs
    python -m bench.scale --budget-s 300 -- --max-concurrent 2 --space bench/spaces/emb32.yaml
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.synthetic import write_ratings_csv

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WORK = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mf-tune" / "bench"
TARGET_LOAD_S = 60.0
TARGET_TOTAL_GB = 8.0
TARGET_AT_FIRST_RUNG = 30
GB = 1 << 30

LOAD_SCRIPT = """
import json, sys, time
started = time.perf_counter()
from mf.data import prepare_dataset
imported = time.perf_counter()
data = prepare_dataset(sys.argv[1], split="random", val_fraction=0.01)
done = time.perf_counter()
status = dict(line.split(":", 1) for line in open("/proc/self/status") if line.startswith(("VmHWM", "VmRSS")))
print(json.dumps({
    "import_s": imported - started, "prepare_s": done - imported,
    "peak_rss_mb": int(status["VmHWM"].split()[0]) / 1024, "rss_mb": int(status["VmRSS"].split()[0]) / 1024,
    "ratings": len(data.train) + len(data.val), "users": data.n_users, "items": data.n_items,
}))
"""


def _psutil() -> Any:
    """psutil, or the copy Ray ships in ray/thirdparty_files (this project installs no other)."""
    try:
        import psutil
    except ImportError:
        spec = importlib.util.find_spec("ray")
        if spec is None or spec.origin is None:
            raise
        sys.path.append(str(Path(spec.origin).parent / "thirdparty_files"))
        import psutil
    return psutil


def _pss_bytes(proc: Any) -> int:
    """Proportional set size: /proc/PID/smaps_rollup (cheap), else psutil's full memory info."""
    try:
        for line in Path(f"/proc/{proc.pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(proc.memory_full_info().pss)


@dataclass
class Peak:
    """One process's peaks over the run."""

    role: str
    title: str
    rss: int = 0
    pss: int = 0


@dataclass
class TreeWatch:
    """Polls a process and its descendants; keeps each one's peaks and the peak of their sum."""

    root: int
    peaks: dict[int, Peak] = field(default_factory=dict)
    total_pss: int = 0
    total_rss: int = 0
    polls: int = 0

    def poll(self) -> None:
        psutil = _psutil()
        try:
            root = psutil.Process(self.root)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        pss_sum = rss_sum = 0
        for proc in procs:
            try:
                rss, pss = int(proc.memory_info().rss), _pss_bytes(proc)
                title = " ".join(proc.cmdline())[:80] or proc.name()
            except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
                continue
            peak = self.peaks.setdefault(proc.pid, Peak(role=_role(proc.pid, self.root, title), title=title))
            if peak.role != "driver" and _role(proc.pid, self.root, title) == "worker":
                peak.role = "worker"  # a worker's title changes once it runs something
                if "IDLE" not in title:
                    peak.title = title
            peak.rss, peak.pss = max(peak.rss, rss), max(peak.pss, pss)
            pss_sum, rss_sum = pss_sum + pss, rss_sum + rss
        self.total_pss, self.total_rss = max(self.total_pss, pss_sum), max(self.total_rss, rss_sum)
        self.polls += 1


def _role(pid: int, root: int, title: str) -> str:
    """driver (tune.run), worker (a Ray worker process, which runs trials) or ray (Ray's own)."""
    if pid == root:
        return "driver"
    if any(agent in title for agent in ("DashboardAgent", "RuntimeEnvAgent")):
        return "ray"
    if title.startswith("ray::") or "workers/default_worker.py" in title:
        return "worker"
    return "ray"


def ensure_file(work: Path, n_ratings: int) -> Path:
    """The cached data folder holding ratings.csv for `n_ratings`, generated the first time."""
    folder = work / f"synthetic-{n_ratings}"
    path = folder / "ratings.csv"
    if not path.is_file():
        print(f"generating {path} ({n_ratings:,} ratings, once)...", flush=True)
        started = time.perf_counter()
        write_ratings_csv(path, n_ratings)
        print(f"   {path.stat().st_size / GB:.2f} GB in {time.perf_counter() - started:.0f} s", flush=True)
    return folder


def time_load(folder: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(folder)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"error: timing prepare_dataset failed:\n{done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_tune(
    folder: Path, *, storage: Path, name: str, budget_s: float, extra: list[str], poll_s: float, log: Path
) -> tuple[TreeWatch, float, int]:
    cmd = [
        sys.executable,
        "-m",
        "tune.run",
        "--data",
        str(folder),
        "--split",
        "random",
        "--val-fraction",
        "0.01",
    ]
    cmd += ["--num-samples", "-1", "--time-budget-s", str(budget_s), "--storage-path", str(storage)]
    cmd += ["--name", name, *extra]
    print(f"running {' '.join(cmd[1:])}\n   log: {log}", flush=True)
    started = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        watch = TreeWatch(proc.pid)
        while proc.poll() is None:
            watch.poll()
            time.sleep(poll_s)
    return watch, time.perf_counter() - started, proc.returncode


def read_trials(experiment: Path, grace_period: int) -> dict[str, Any]:
    path = experiment / "trials.csv"
    if not path.is_file():
        return {"trials_csv": None}
    with path.open() as f:
        rows = list(csv.DictReader(f))
    epochs = [int(r.get("epochs") or 0) for r in rows]
    best = [float(r["best_val_mse"]) for r in rows if r.get("best_val_mse")]
    return {
        "trials_csv": str(path),
        "trials": sum(e > 0 for e in epochs),
        "epochs": sum(epochs),
        "at_first_rung": sum(e >= grace_period for e in epochs),
        "best_val_mse": min(best, default=None),
        "outcomes": {
            o: sum(r.get("outcome") == o for r in rows) for o in sorted({r.get("outcome") for r in rows})
        },
    }


def _flag(extra: list[str], name: str, default: int) -> int:
    """A flag's value among the arguments passed on to tune.run (--grace-period N), else the default."""
    for i, arg in enumerate(extra):
        if arg == name and i + 1 < len(extra):
            return int(extra[i + 1])
        if arg.startswith(name + "="):
            return int(arg.split("=", 1)[1])
    return default


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    parser.add_argument("--ratings", type=int, default=25_000_000, help="ratings in the file (25,000,000)")
    parser.add_argument("--budget-s", type=float, default=600.0, help="tune.run's --time-budget-s (600)")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK, help=f"(default {DEFAULT_WORK})")
    parser.add_argument("--name", default=None, help="experiment name (default scale-<time>)")
    parser.add_argument("--poll-s", type=float, default=1.0, help="seconds between memory polls (1)")
    parser.add_argument("--skip-load", action="store_true", help="do not time prepare_dataset apart")
    parser.add_argument("--smoke", action="store_true", help="200k ratings and 45 s: check that it runs")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("extra", nargs="*", help="after --: more tune.run flags")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.smoke:
        args.ratings, args.budget_s = 200_000, 45.0
    work = args.work_dir.expanduser()
    folder = ensure_file(work, args.ratings)
    name = args.name or time.strftime("scale-%Y%m%d-%H%M%S")
    storage = work / "runs"
    storage.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "ratings": args.ratings,
        "budget_s": args.budget_s,
        "load_average": os.getloadavg(),
    }
    if not args.skip_load:
        load = time_load(folder)
        result["load"] = load
        print(
            f"load: prepare_dataset {load['prepare_s']:.1f} s (+{load['import_s']:.1f} s imports), peak RSS "
            f"{load['peak_rss_mb']:,.0f} MB = {load['peak_rss_mb'] * 2**20 / load['ratings']:.0f} B a rating, "
            f"{load['ratings']:,} ratings, {load['users']:,} users, {load['items']:,} items",
            flush=True,
        )
    watch, wall_s, code = run_tune(
        folder,
        storage=storage,
        name=name,
        budget_s=args.budget_s,
        extra=args.extra,
        poll_s=args.poll_s,
        log=work / f"{name}.log",
    )
    grace = _flag(args.extra, "--grace-period", 2)
    trials = read_trials(storage / name, grace)
    result.update(tune_exit=code, tune_wall_s=wall_s, **trials)
    peaks = sorted(watch.peaks.values(), key=lambda p: (p.role, -p.pss))
    result["processes"] = [vars(p) for p in peaks]
    result.update(total_pss_gb=watch.total_pss / GB, total_rss_gb=watch.total_rss / GB, polls=watch.polls)

    print(
        f"\n== tune.run on {args.ratings:,} ratings, {args.budget_s:.0f} s budget: exit {code}, {wall_s:.0f} s"
    )
    for role in ("driver", "worker", "ray"):
        group = [p for p in peaks if p.role == role]
        if not group:
            continue
        shown = group if role != "ray" else group[:3]
        for p in shown:
            print(f"   {role:6} peak RSS {p.rss / GB:5.2f} GB  PSS {p.pss / GB:5.2f} GB  {p.title}")
        if role == "ray" and len(group) > len(shown):
            rest = group[len(shown) :]
            print(
                f"   ray    {len(rest)} more processes, PSS {sum(p.pss for p in rest) / GB:.2f} GB at their peaks"
            )
    print(
        f"   all processes together: peak PSS {watch.total_pss / GB:.2f} GB (RSS summed {watch.total_rss / GB:.2f} GB,"
        f" counting shared pages once per process), {watch.polls} polls"
    )
    if trials.get("trials_csv"):
        print(
            f"   trials {trials['trials']}, epochs {trials['epochs']}, at ASHA's first rung (epoch {grace}) "
            f"{trials['at_first_rung']}; outcomes {trials['outcomes']}; best val MSE {trials['best_val_mse']}"
        )
    else:
        print(f"   no trials.csv in {storage / name}: see the log")
    checks = []
    if "load" in result:
        checks.append(("load", result["load"]["prepare_s"] < TARGET_LOAD_S, f"< {TARGET_LOAD_S:.0f} s"))
    checks.append(
        ("all processes (PSS)", watch.total_pss / GB < TARGET_TOTAL_GB, f"< {TARGET_TOTAL_GB:.0f} GB")
    )
    if trials.get("trials_csv"):
        checks.append(
            ("first rung", trials["at_first_rung"] >= TARGET_AT_FIRST_RUNG, f">= {TARGET_AT_FIRST_RUNG}")
        )
    print("   targets: " + "; ".join(f"{n} {rule}: {'met' if ok else 'NOT met'}" for n, ok, rule in checks))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
