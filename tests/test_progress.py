"""The live progress line against real Ray Tune runs in a subprocess, whose real stdout is a file or
a pseudo-terminal: Ray's own output stays off unless asked for, the line counts what happened."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tune.extras.progress import ProgressState
from tune.record.outcome import COMPLETE, FAIL, PRUNED, trial_outcome

ROOT = Path(__file__).resolve().parents[1]

# Eight trials with known curves: val_mse = x + 1/epoch over 3 epochs, and x = 0.95 diverges at
# epoch 1. ASHA (rungs at epochs 1 and 2, rf 2) prunes some; x = 0.1 is best at every rung and so
# completes, with the best val_mse 0.1 + 1/3. A second, verbose run checks that Ray's output returns.
SCRIPT = textwrap.dedent(
    """
    import math, os, sys, time
    import ray
    from ray import tune
    from tune.extras.progress import LiveProgress, ray_output

    def trainable(config):
        for epoch in range(1, 4):
            time.sleep(0.15)
            if config["x"] > 0.9:
                tune.report({"val_mse": math.inf, "epoch": epoch, "diverged": 1})
                return
            tune.report({"val_mse": config["x"] + 1 / epoch, "epoch": epoch, "diverged": 0})

    def run(name, verbose):
        output = ray_output(verbose=verbose)
        if not ray.is_initialized():
            ray.init(address="local", include_dashboard=False, num_cpus=2, **output.init_kwargs)
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": 1}),
            param_space={"x": tune.grid_search([0.1, 0.5, 0.3, 0.95, 0.7, 0.2, 0.8, 0.6])},
            tune_config=tune.TuneConfig(
                metric="val_mse", mode="min", reuse_actors=True,
                scheduler=tune.schedulers.ASHAScheduler(
                    time_attr="epoch", max_t=3, grace_period=1, reduction_factor=2
                ),
            ),
            run_config=tune.RunConfig(
                name=name, storage_path=sys.argv[1], verbose=output.run_config_verbose,
                callbacks=[LiveProgress(max_epochs=3, time_budget_s=60, interval_s=1.0)],
            ),
        )
        grid = tuner.fit()
        print(f"SUMMARY {name} {len(grid)} trials", flush=True)

    run("quiet", verbose=False)
    if len(sys.argv) > 2:
        run("verbose", verbose=True)
    """
)
LINE = re.compile(
    r"^tune \d+:\d\d/1:00 \| (?P<running>\d+) running, (?P<complete>\d+) complete, (?P<pruned>\d+) pruned, "
    r"(?P<failed>\d+) failed \| (?P<epochs>[\d,]+) epochs, [\d.]+/s \| (best val_mse (?P<best>[\d.]+) "
    r"\(trial \w+\)|no result yet)$"
)


def _run(tmp_path: Path, *extra: str, stdout: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "runs"), *extra],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_quiet_run_prints_only_the_progress_line_and_verbose_brings_ray_back(tmp_path: Path) -> None:
    out_file = tmp_path / "stdout.txt"
    with out_file.open("w") as f:
        done = _run(tmp_path, "verbose", stdout=f.fileno())
    assert done.returncode == 0, done.stderr[-3000:]
    out = out_file.read_text().splitlines()
    quiet = out[: out.index("SUMMARY quiet 8 trials") + 1]
    # Not a terminal: the quiet run printed its progress line every second and nothing else (no
    # experiment box, no trial boxes, no worker output), and the summary after fit() is last.
    lines = [LINE.match(line) for line in quiet[:-1]]
    assert all(lines) and 2 <= len(lines) <= 30, quiet
    final = lines[-1]
    assert final is not None
    # The final line counts every trial: none running; the diverged one failed; ASHA's choice
    # splits the rest, and x=0.1 completed with the best value.
    counts = {k: int(final[k]) for k in ("running", "complete", "pruned", "failed")}
    assert counts["running"] == 0 and counts["failed"] == 1
    assert counts["complete"] + counts["pruned"] + counts["failed"] == 8 and counts["complete"] >= 1
    assert final["best"] == "0.4333"
    assert 8 <= int(final["epochs"].replace(",", "")) <= 3 * 8
    # Ray logged nothing at INFO on stderr.
    assert " INFO " not in done.stderr, done.stderr
    # The verbose run brings Ray's own output back: its configuration box and trial reports.
    verbose = "\n".join(out[len(quiet) :])
    assert "Configuration for experiment" in verbose and "Trial status" in verbose


@pytest.mark.slow
def test_in_a_terminal_the_line_refreshes_in_place(tmp_path: Path) -> None:
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    # A fresh pty is 0 columns wide, unlike any terminal: give it a terminal's size.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
    err_file = tmp_path / "stderr.txt"
    with err_file.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", SCRIPT, str(tmp_path / "runs")],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=follower,
            stderr=err,
        )
    os.close(follower)
    chunks = []
    while True:  # read while it runs, so that a full pty never blocks it
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO once the last writer has closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=300) == 0, err_file.read_text()[-3000:]
    text = b"".join(chunks).decode(errors="replace")
    # tqdm redraws one line with carriage returns: many redraws, few line ends before the summary.
    before_summary = text[: text.index("SUMMARY quiet")]
    assert before_summary.count("\r") >= 5 and before_summary.count("\n") <= 2
    # The last drawing is the final count, with the bar over the time budget.
    last = before_summary.replace("\r\n", "\n").split("\r")[-1].strip()
    assert re.search(
        r"\|\S*\s*\| tune \d+:\d\d/1:00 \| 0 running, .* 1 failed .*best val_mse 0\.4333", last
    ), last


def test_line_shows_budget_counts_rate_and_best() -> None:
    state = ProgressState(time_budget_s=420, started=100.0)
    state.running |= {"a", "b"}
    for trial, outcome in [("c", COMPLETE), ("d", PRUNED), ("e", PRUNED), ("f", FAIL), ("f", FAIL)]:
        state.end(trial, outcome)
    state.epochs = 1_523
    state.score("c", 0.85)
    state.score("d", float("nan"))
    state.score("e", 0.8412)
    # Elapsed against the budget, counts (a trial ended twice counts once), epochs a second, best.
    assert state.line(now=251.0) == (
        "tune 2:31/7:00 | 2 running, 1 complete, 2 pruned, 1 failed | 1,523 epochs, 10.1/s | "
        "best val_mse 0.8412 (trial e)"
    )


def test_trial_outcome_rule() -> None:
    # Reached max_epochs: COMPLETE; stopped before: PRUNED; diverged, errored or no epoch: FAIL.
    assert trial_outcome("TERMINATED", {"epoch": 30, "diverged": 0}, 30) == COMPLETE
    assert trial_outcome("TERMINATED", {"epoch": 2, "diverged": 0}, 30) == PRUNED
    assert trial_outcome("TERMINATED", {"epoch": 2, "diverged": 1}, 30) == FAIL
    assert trial_outcome("ERROR", {"epoch": 5}, 30) == FAIL
    assert trial_outcome("TERMINATED", {}, 30) == FAIL
    # A trial whose space tunes its length is COMPLETE at its own last epoch.
    assert trial_outcome("TERMINATED", {"epoch": 12, "config": {"epochs": 12}}, 30) == COMPLETE
    assert trial_outcome("TERMINATED", {"epoch": 6, "config": {"epochs": 12}}, 30) == PRUNED
