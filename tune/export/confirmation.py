"""Confirm the winner before export: the best configurations trained again with fresh seeds.

The search's best trial is the minimum over hundreds of noisy values: often a lucky seed rather
than the best configuration. So the top `confirm_top` distinct configurations are each trained to
max_epochs with `confirm_seeds` new seeds (same data and split, new initialisation and batch order),
and the one whose mean validation curve is lowest at some epoch is exported, with that epoch count
and the mean and standard deviation over the seeds there. This module chooses the candidates,
stores each run's curve in `<experiment>/confirm/` and picks the winner, from files alone (no Ray);
tune.search.experiment runs the trainings on the cluster.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from mf.atomic import write_json
from mf.config import TrainConfig
from tune.record.keys import EPOCH_SECONDS
from tune.record.outcome import FAIL
from tune.record.results import TrialRecord
from tune.settings import trial_config, trial_epochs

CONFIRM_START_S = 10.0
"""What the confirmation takes before its first run can end (its worker processes start and import
torch), kept before any run is planned, so that time too short for a run plans none. On 2 cores the
first run ended 5-10 s after the start (bench/README.md, the confirmation's size)."""
CONFIRM_DIR = "confirm"
SUMMARY_FILE = "summary.json"
REFERENCE_FILE = "tutorial.json"


@dataclass(frozen=True)
class Candidate:
    trial_id: str
    params: dict[str, Any]
    search_best: float
    """The trial's own best val MSE in the search."""


@dataclass(frozen=True)
class Confirmed:
    """One candidate after its confirmation runs."""

    trial_id: str
    params: dict[str, Any]
    search_best: float
    seeds: tuple[int, ...]
    epoch: int
    """The epoch where the mean validation curve over the seeds is lowest."""
    mean: float
    sd: float
    """Standard deviation over the seeds at `epoch` (0 with one seed)."""


def confirmation_seeds(base_seed: int, n: int) -> list[int]:
    """`n` seeds that are not the search's: the search trained every trial with `base_seed`."""
    return [base_seed + 1 + i for i in range(n)]


def candidates(records: Sequence[TrialRecord], top: int) -> list[Candidate]:
    """The `top` trials by best val MSE, one per distinct configuration."""
    scored = sorted(
        (r for r in records if r.outcome != FAIL and math.isfinite(r.best_val_mse)),
        key=lambda r: r.best_val_mse,
    )
    chosen: list[Candidate] = []
    for r in scored:
        if len(chosen) == top:
            break
        if all(c.params != r.params for c in chosen):
            chosen.append(Candidate(r.trial_id, dict(r.params), r.best_val_mse))
    return chosen


def run_seconds(record: TrialRecord, max_epochs: int) -> float:
    """What one confirmation run of `record`'s configuration costs (see `run_cost`): its epochs
    (`trial_epochs`) at its median epoch time."""
    if record.history is None or EPOCH_SECONDS not in record.history:
        return math.nan
    return run_cost(record.history[EPOCH_SECONDS].dropna().tolist(), trial_epochs(record.params, max_epochs))


def run_cost(epoch_seconds: Sequence[float], max_epochs: int) -> float:
    """One confirmation run of a configuration whose epochs took `epoch_seconds`: max_epochs of its
    median epoch (nan without an epoch)."""
    return statistics.median(epoch_seconds) * max_epochs if epoch_seconds else math.nan


def confirmation_seconds(costs: Sequence[float], *, seeds: int, slots: int) -> float:
    """What confirming the candidates takes (costs: one run's seconds each; unknown ones count 0):
    `seeds` runs each, spread over `slots` trial slots."""
    return seeds * sum(c for c in costs if math.isfinite(c)) / max(slots, 1)


REFIT_RUNS = {"none": 0, "train+val": 1, "all": 2}
"""How many models the export trains after the confirmation, by --refit (each one of the winner,
each an ensemble of --ensemble runs)."""


def refit_cost(costs: Sequence[float], *, refit: str, larger: float, ensemble: int = 1) -> float:
    """What the export's refit will take (at most): REFIT_RUNS[refit] models of `ensemble` runs each
    of the best candidate (costs: one run's seconds each, best first), each run on a training part
    `larger` times the search's."""
    if not costs or not math.isfinite(costs[0]):
        return 0.0
    return REFIT_RUNS[refit] * ensemble * costs[0] * larger


def affordable(costs: Sequence[float], *, seeds: int, slots: int, seconds: float | None) -> int:
    """How many of the candidates (costs: one run's seconds each, best candidate first) can be
    confirmed with `seeds` runs each on `slots` trial slots within `seconds` (None: all of them)."""
    if seconds is None:
        return len(costs)
    for n in range(len(costs)):
        if confirmation_seconds(costs[: n + 1], seeds=seeds, slots=slots) > seconds:
            return n
    return len(costs)


def run_config(base: TrainConfig, candidate: Candidate, *, seed: int, max_epochs: int) -> TrainConfig:
    """The training config of one confirmation run: a new seed for the init and the batch order, the
    experiment's split (split_seed keeps it, for a retrain from the exported config too)."""
    config = trial_config(base, candidate.params, max_epochs)
    return config.replace(seed=seed, split_seed=base.effective_split_seed)


def run_file(folder: Path, trial_id: str, seed: int) -> Path:
    return folder / CONFIRM_DIR / trial_id / f"seed_{seed}.json"


def checkpoint_file(folder: Path, trial_id: str, seed: int) -> Path:
    """Where the first seed's run of a candidate keeps its model (the export takes the winner's)."""
    return folder / CONFIRM_DIR / trial_id / f"seed_{seed}.pt"


def save_reference(folder: Path, config: dict[str, Any], metrics: dict[str, float]) -> None:
    write_json(folder / CONFIRM_DIR / REFERENCE_FILE, {"config": config, "metrics": metrics})


def read_reference(folder: Path, config: dict[str, Any]) -> dict[str, float] | None:
    """The tutorial reference's metrics, if one was trained for exactly `config`."""
    return _read_saved(
        folder / CONFIRM_DIR / REFERENCE_FILE,
        lambda saved: saved["metrics"] if saved.get("config") == config else None,
        instead="read as missing",
    )


T = TypeVar("T")


def _read_saved(path: Path, read: Callable[[Any], T], *, instead: str) -> T | None:
    """`read` of the JSON in `path`; None when there is no such file, and None with a warning naming
    the file when it is damaged (`instead`: what the caller does then)."""
    if not path.is_file():
        return None
    try:
        return read(json.loads(path.read_text()))
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        print(f"warning: {path} is damaged ({e}); {instead}", file=sys.stderr)
        return None


def save_run(folder: Path, candidate: Candidate, seed: int, curve: dict[int, float]) -> None:
    write_json(
        run_file(folder, candidate.trial_id, seed),
        {"trial_id": candidate.trial_id, "seed": seed, "params": candidate.params, "curve": curve},
    )


def read_run(folder: Path, trial_id: str, seed: int) -> dict[int, float] | None:
    return _read_saved(
        run_file(folder, trial_id, seed),
        lambda saved: {int(epoch): float(v) for epoch, v in saved["curve"].items()},
        instead="read as missing (a resumed confirmation runs it again)",
    )


def confirm(candidate: Candidate, curves: dict[int, dict[int, float]]) -> Confirmed | None:
    """The candidate's result from its runs' curves (seed -> epoch -> val MSE), at the epoch with the
    lowest mean over the seeds that reached it; None if no run has a finite epoch."""
    epochs = set.intersection(*(set(c) for c in curves.values())) if curves else set()
    means = {
        e: statistics.fmean(c[e] for c in curves.values())
        for e in epochs
        if all(math.isfinite(c[e]) for c in curves.values())
    }
    if not means:
        return None
    epoch = min(means, key=means.get)
    values = [c[epoch] for c in curves.values()]
    return Confirmed(
        trial_id=candidate.trial_id,
        params=candidate.params,
        search_best=candidate.search_best,
        seeds=tuple(sorted(curves)),
        epoch=epoch,
        mean=means[epoch],
        sd=statistics.stdev(values) if len(values) > 1 else 0.0,
    )


def ranked(results: Sequence[Confirmed]) -> list[Confirmed]:
    """The confirmed candidates, best mean first: the winner rule (the export takes the first)."""
    return sorted(results, key=lambda c: c.mean)


def write_summary(folder: Path, results: Sequence[Confirmed], *, planned: int, seconds: float) -> Path:
    """The confirmed candidates, ranked; `planned` runs were asked for."""
    return write_json(
        folder / CONFIRM_DIR / SUMMARY_FILE,
        {
            "planned_runs": planned,
            "seconds": round(seconds, 2),
            "confirmed": [asdict(c) for c in ranked(results)],
        },
    )


def read_summary(folder: Path) -> list[Confirmed]:
    """The confirmed candidates, best mean first; [] if the experiment has no confirmation."""
    confirmed = _read_saved(
        folder / CONFIRM_DIR / SUMMARY_FILE,
        lambda saved: [Confirmed(**{**c, "seeds": tuple(c["seeds"])}) for c in saved["confirmed"]],
        instead="read as no confirmation (the search's best is exported)",
    )
    return confirmed or []


def format_confirmation(results: Sequence[Confirmed]) -> list[str]:
    if not results:
        return []
    lines = [
        f"confirmation: the top {len(results)} configurations, each with {fresh_seeds(len(results[0].seeds))}:"
    ]
    for i, c in enumerate(results):
        mark = "  <- exported" if i == 0 else ""
        lines.append(
            f"  {c.trial_id}  val_mse {c.mean:.4f} ± {c.sd:.4f} @ epoch {c.epoch:<3d} "
            f"(search best {c.search_best:.4f}){mark}"
        )
    return lines


def fresh_seeds(n: int) -> str:
    """ "1 fresh seed", "3 fresh seeds": how the summary and the export name a confirmation's runs."""
    return f"{n} fresh seed" + ("s" if n != 1 else "")
