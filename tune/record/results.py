"""What happened in an experiment, read from its files alone: the Optuna study and the trial folders.

The study lists the experiment's trials (the searcher made each one) with their parameters and how
each ended (tune.record.outcome); each trial's folder (tune.record.trial_files) holds what it did: every result,
its failures, its checkpoints. `collect_trials` joins the two; trials.csv, the end-of-run summary,
the export and the report all read an experiment through it. Tune's own snapshot of the experiment
is left to Tune: it may be older than both, and reading it would need Ray.
"""

from __future__ import annotations

import csv
import io
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from mf.atomic import atomic_write_text
from mf.errors import MFError
from tune.record.keys import (
    DIVERGED,
    EPOCH,
    ERROR,
    METRIC,
    NODE_ID,
    RANKING_METRIC,
    RAY_TRIAL_ID,
    VAL_MSE,
    WARM_START_FROM,
)
from tune.record.outcome import FAIL, RUNNING, outcome_of_curve
from tune.record.trial_files import (
    ERROR_EVENT,
    EVENTS_FILE,
    RETRY_EVENT,
    checkpoint_files,
    curve_of,
    has_ended,
    read_events,
    read_params,
    read_results,
    trial_dirname,
    trial_folders,
    trial_id_of,
)
from tune.settings import trial_epochs

TRIALS_FILE = "trials.csv"


@dataclass
class TrialRecord:
    """One trial of the experiment: a row of trials.csv."""

    trial_id: str
    outcome: str
    """The study's state of the trial: COMPLETE, PRUNED, FAIL, or RUNNING (not ended, or interrupted)."""
    epochs: int
    best_val_mse: float
    best_epoch: int
    last_val_mse: float
    node_id: str
    retries: int
    optuna_number: int | None = None
    error: str = ""
    confirm_val_mse: float = math.nan
    """The mean val MSE over the confirmation's fresh seeds (tune.export.confirmation); NaN: not confirmed."""
    confirm_val_mse_sd: float = math.nan
    confirm_epoch: int | None = None
    best_val_ndcg: float = math.nan
    """The highest RANKING_METRIC of any epoch (NaN: the trials did not measure it, --val-ndcg-k 0)."""
    ndcg_epoch: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    history: pd.DataFrame | None = field(default=None, repr=False)
    trial_dir: Path | None = field(default=None, repr=False)
    """The trial's folder: its results and checkpoints (the newest carries the best epoch's weights)."""

    @property
    def curve(self) -> dict[int, float]:
        """Epoch -> val MSE of every epoch the trial reported."""
        if self.history is None:
            return {}
        return curve_of(self.history.to_dict("records"), VAL_MSE, EPOCH)

    def has_checkpoint(self) -> bool:
        return self.trial_dir is not None and bool(checkpoint_files(self.trial_dir))

    def row(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _NOT_IN_CSV}
        return {**out, **{f"param_{k}": v for k, v in self.params.items()}}


_NOT_IN_CSV = ("params", "history", "trial_dir")


def collect_trials(folder: Path, *, max_epochs: int, study: optuna.Study | None) -> list[TrialRecord]:
    """Every trial of the experiment in the order the searcher made them (warm-start copies from an
    earlier study are not this experiment's). The study is the index: a folder it does not name is a
    proposal that a resumed driver ran again under a new trial id. Without a study (it was lost, or
    lives in a database out of reach) the trials are read from their folders alone."""
    if study is None:
        return _from_folders(folder, max_epochs=max_epochs)
    records = []
    for t in study.get_trials(deepcopy=False):
        if WARM_START_FROM in t.user_attrs or RAY_TRIAL_ID not in t.user_attrs:
            continue
        ray_id = str(t.user_attrs[RAY_TRIAL_ID])
        trial_dir = folder / trial_dirname(ray_id)
        record = _readable(
            trial_dir,
            _record,
            ray_id,
            trial_dir,
            outcome=t.state.name,
            params=dict(t.params),
            number=t.number,
        )
        if record is not None:
            records.append(record)
    return records


def _readable(
    trial_dir: Path, read: Callable[..., TrialRecord], *args: Any, **kwargs: Any
) -> TrialRecord | None:
    """`read(*args, **kwargs)`, or None with a warning naming the trial when its files are damaged: one trial's
    damage leaves the others' export, report and summary standing."""
    try:
        return read(*args, **kwargs)
    except (MFError, ValueError, TypeError, OSError) as e:
        print(
            f"warning: trial {trial_id_of(trial_dir)} left out: its files are damaged ({e})", file=sys.stderr
        )
        return None


def _from_folders(folder: Path, *, max_epochs: int) -> list[TrialRecord]:
    """The trials as their folders alone tell: ended by tune.record.outcome's rule, else RUNNING."""
    records = []
    for trial_dir in trial_folders(folder):
        record = _readable(trial_dir, _record_of_folder, trial_dir, max_epochs)
        if record is not None:
            records.append(record)
    return records


def _record_of_folder(trial_dir: Path, max_epochs: int) -> TrialRecord:
    results = read_results(trial_dir)
    params = read_params(trial_dir) or {}
    ended = bool(results) and has_ended(results[-1])
    state = outcome_of_curve(
        curve_of(results, METRIC, EPOCH),
        failed=bool(results) and _failed(results[-1]),
        max_epochs=trial_epochs(params, max_epochs),
    )[0].name
    return _record(
        trial_id_of(trial_dir), trial_dir, outcome=state if ended else RUNNING, params=params, number=None
    )


def _failed(result: dict[str, Any]) -> bool:
    return bool(result.get(DIVERGED))


def _record(
    trial_id: str, trial_dir: Path, *, outcome: str, params: dict[str, Any], number: int | None
) -> TrialRecord:
    results = read_results(trial_dir)
    events = read_events(trial_dir)
    last = results[-1] if results else {}
    history = pd.DataFrame(results) if results else None
    curve = curve_of(results, VAL_MSE, EPOCH)
    best_epoch = min(curve, key=curve.get) if curve else 0
    ranking = curve_of(results, RANKING_METRIC, EPOCH)
    ndcg_epoch = max(ranking, key=ranking.get) if ranking else None
    error = str(last.get(ERROR, "") or "")
    if not error and any(e.get("event") == ERROR_EVENT for e in events):
        error = f"see {trial_dir / 'error.txt'} ({EVENTS_FILE})"
    return TrialRecord(
        trial_id=trial_id,
        outcome=outcome,
        epochs=int(last.get(EPOCH, 0) or 0),
        best_val_mse=curve[best_epoch] if curve else math.nan,
        best_epoch=best_epoch,
        last_val_mse=float(last.get(VAL_MSE, math.nan)),
        node_id=str(last.get(NODE_ID, "")),
        retries=sum(e.get("event") == RETRY_EVENT for e in events),
        optuna_number=number,
        error=error,
        best_val_ndcg=ranking[ndcg_epoch] if ndcg_epoch is not None else math.nan,
        ndcg_epoch=ndcg_epoch,
        params=params,
        history=history,
        trial_dir=trial_dir,
    )


def best_trial(records: list[TrialRecord]) -> TrialRecord:
    """The trial with the lowest val MSE at any epoch (a tie goes to one that kept its checkpoint)."""
    scored = [r for r in records if r.outcome != FAIL and math.isfinite(r.best_val_mse)]
    if not scored:
        raise MFError("no trial reported a finite val_mse yet: nothing to export")
    best = min(r.best_val_mse for r in scored)
    tied = [r for r in scored if r.best_val_mse == best]
    # Trials that tie (the same params train the same curve) may not all have kept their
    # checkpoint (tune/search/retention.py keeps the best few): prefer one that has.
    return next((r for r in tied if r.has_checkpoint()), tied[0])


def best_ranking_trial(records: list[TrialRecord]) -> TrialRecord | None:
    """The trial with the highest val NDCG at any epoch, or None where no trial measured it."""
    scored = [r for r in records if r.outcome != FAIL and math.isfinite(r.best_val_ndcg)]
    return max(scored, key=lambda r: r.best_val_ndcg) if scored else None


def epochs_spent(records: list[TrialRecord]) -> int:
    return sum(r.epochs for r in records)


def write_trials_csv(folder: Path, records: list[TrialRecord]) -> Path:
    rows = [r.row() for r in records]
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(folder / TRIALS_FILE, out.getvalue())
