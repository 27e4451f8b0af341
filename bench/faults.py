"""`python -m bench.faults`: a fault campaign. Short real `tune.run`s, each killed at a random moment
of its search, its confirmation or its export with SIGKILL or SIGINT, then finished with
`tune.run --resume` (search, confirmation) or `python -m tune.export` (export); each must end whole.

A run is whole when the recovery exits 0 and then:
- trials.csv has one row per trial folder and per trial of the Optuna study, no trial twice (by Tune
  id or by Optuna number) and none RUNNING, and the study holds no RUNNING trial;
- `best/` loads (`mf.training.load_model`);
- no process of the run is left: every process the drivers started carries a marker in its
  environment (MF_FAULTS_RUN), and none with the run's marker is alive ten seconds after its recovery.

The phase a kill landed in is read from the folder at that moment: trials.csv written (the export
has begun), `confirm/` made (the confirmation), else the search. A driver that ended before its kill
is counted as such (nothing killed) and checked the same way.

    python -m bench.faults                       # 20 runs, about 22 minutes on 2 cores
    python -m bench.faults --runs 4 --seed 1     # a smaller campaign
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import optuna

from mf.training import load_model
from tune.record.study import JOURNAL_FILE, open_storage

REPO = Path(__file__).resolve().parents[1]
MARKER = "MF_FAULTS_RUN"
SPACE = "params:\n  lr: {type: float, low: 1.0e-3, high: 3.0e-2, log: true}\n"
RUN_FLAGS = (
    "--data", "ml-latest-small", "--space", "{space}", "--emb-dim", "128", "--num-samples", "8",
    "--max-epochs", "4", "--confirm-top", "2", "--confirm-seeds", "2", "--time-budget-s", "60",
)  # fmt: skip
"""A run with a search, a confirmation and an export each long enough to hit: with its recovery and
the 10 s wait, about a minute on 2 cores."""
PHASES = ("search", "confirmation", "export")
SIGNALS = {"SIGKILL": signal.SIGKILL, "SIGINT": signal.SIGINT}


@dataclass
class Outcome:
    run: int
    signal: str
    aimed_at: str
    phase: str  # where the kill landed, or "ended first"
    driver_exit: int | None
    recovery: str
    recovery_exit: int | None
    problems: list[str] = field(default_factory=list)


def started_markers(folder: Path) -> dict[str, bool]:
    return {
        "export": (folder / "trials.csv").exists(),
        "confirmation": (folder / "confirm").exists(),
        "search": any(f.stat().st_size > 0 for f in folder.glob("trial_*/result.json")),
    }


def phase_now(folder: Path) -> str:
    markers = started_markers(folder)
    return next((p for p in reversed(PHASES) if markers[p]), "starting")


def processes_with(marker: str) -> list[int]:
    """Pids of live processes whose environment holds MF_FAULTS_RUN=`marker`."""
    found, needle = [], f"{MARKER}={marker}\0".encode()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if needle in environ.read_bytes() + b"\0":
                pid = int(environ.parent.name)
                state = (environ.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append(pid)
        except OSError:  # gone meanwhile, or not ours to read
            pass
    return found


def check(folder: Path, name: str) -> list[str]:
    """What is not whole about the experiment in `folder` (empty: all of it is)."""
    problems = []
    table = folder / "trials.csv"
    if not table.is_file():
        return ["no trials.csv"]
    rows = list(csv.DictReader(table.open()))
    ids = [r["trial_id"] for r in rows]
    numbers = [r["optuna_number"] for r in rows]
    folders = {p.name.removeprefix("trial_") for p in folder.glob("trial_*") if p.is_dir()}
    if len(set(ids)) != len(ids) or len(set(numbers)) != len(numbers):
        problems.append("a trial twice in trials.csv")
    if set(ids) != folders:
        problems.append(f"trials.csv has {len(set(ids))} trials, the folder {len(folders)}")
    if any(r["outcome"] == "RUNNING" for r in rows):
        problems.append("a RUNNING trial in trials.csv")
    study = optuna.load_study(study_name=name, storage=open_storage(str(folder / JOURNAL_FILE)))
    if any(t.state == optuna.trial.TrialState.RUNNING for t in study.trials):
        problems.append("a RUNNING trial in the study")
    if len(study.trials) != len(rows):
        problems.append(f"the study has {len(study.trials)} trials, trials.csv {len(rows)}")
    try:
        load_model(folder / "best" / "model.pt")
    except Exception as e:  # noqa: BLE001 - any failure to load is the finding
        problems.append(f"best/ does not load: {e}")
    return problems


def one_run(i: int, work: Path, rng: random.Random, timeout_s: float) -> Outcome:
    marker = f"{os.getpid()}-{i}"
    env = {**os.environ, "PYTHONPATH": str(REPO), MARKER: marker}
    space = work / "space.yaml"
    name = f"fault{i:02d}"
    folder = work / "runs" / name
    flags = [f.format(space=space) for f in RUN_FLAGS]
    sig_name = rng.choice(sorted(SIGNALS))
    aimed = rng.choice(PHASES)
    log = (work / f"{name}.log").open("w")
    args = [sys.executable, "-m", "tune.run", *flags, "--storage-path", str(work / "runs"), "--name", name]
    driver = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    while driver.poll() is None and not started_markers(folder).get(aimed) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, {"search": 6.0, "confirmation": 3.0, "export": 1.0}[aimed]))
    if driver.poll() is None:
        phase = phase_now(folder)
        driver.send_signal(SIGNALS[sig_name])
    else:
        phase = "ended first"
    try:
        driver_exit = driver.wait(timeout=120)
    except subprocess.TimeoutExpired:
        driver.kill()
        driver_exit = driver.wait()
    if phase == "export" or (phase == "ended first" and driver_exit == 0):
        recovery = [sys.executable, "-m", "tune.export", str(folder)]
    else:
        recovery = [sys.executable, "-m", "tune.run", "--resume", str(folder)]
    done = subprocess.run(
        recovery, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s, check=False
    )
    how = "tune.export" if recovery[2] == "tune.export" else "tune.run --resume"
    out = Outcome(i, sig_name, aimed, phase, driver_exit, how, done.returncode)
    if done.returncode != 0:
        out.problems.append(f"the recovery exited {done.returncode} (see {log.name})")
    if (folder / "experiment.yaml").exists():
        out.problems += check(folder, name)
    else:
        out.problems.append("no experiment.yaml")
    time.sleep(10)
    left = processes_with(marker)
    if left:
        out.problems.append(f"{len(left)} processes left: {left[:5]}")
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)  # not the next run's problem
    return out


def table(outcomes: list[Outcome]) -> str:
    lines = ["| signal | landed in | runs | whole |", "| --- | --- | --- | --- |"]
    counts = Counter((o.signal, o.phase) for o in outcomes)
    whole = Counter((o.signal, o.phase) for o in outcomes if not o.problems)
    for key in sorted(counts):
        lines.append(f"| {key[0]} | {key[1]} | {counts[key]} | {whole[key]} |")
    lines.append(f"| all | | {len(outcomes)} | {sum(whole.values())} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="runs in the campaign (20)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the signals, phases and delays (0)")
    parser.add_argument("--work-dir", type=Path, help="keep the runs here (default: a temp dir)")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="per driver and recovery (300)")
    parser.add_argument("--json", type=Path, help="also write every outcome to this JSON file")
    args = parser.parse_args(argv)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="mf-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "space.yaml").write_text(SPACE)
    rng = random.Random(args.seed)
    outcomes = []
    for i in range(args.runs):
        o = one_run(i, work, rng, args.timeout_s)
        outcomes.append(o)
        verdict = "whole" if not o.problems else "; ".join(o.problems)
        print(
            f"run {i:2d}: {o.signal} aimed at the {o.aimed_at}, landed: {o.phase}, driver exit {o.driver_exit}, "
            f"{o.recovery} exit {o.recovery_exit}: {verdict}",
            flush=True,
        )
    print(table(outcomes))
    print(f"runs kept in {work}")
    if args.json:
        args.json.write_text(json.dumps([asdict(o) for o in outcomes], indent=1))
    return 0 if all(not o.problems for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
