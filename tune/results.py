"""What happened to each trial, read back from an experiment folder (finished, running or interrupted).

Tune's own records (experiment state, each trial's results and checkpoints) give the curves and
the checkpoints; the Optuna study gives what the searcher was told. `trials.csv` joins both.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from ray.tune import Checkpoint, ExperimentAnalysis

from mf.atomic import atomic_write_text
from mf.errors import MFError
from mf.metrics import EPOCH, VAL_MSE
from tune.searcher import DIVERGED, RAY_TRIAL_ID
from tune.trainable import NODE_ID

TRIALS_FILE = "trials.csv"
COMPLETE, PRUNED, FAILED = "COMPLETE", "PRUNED", "FAILED"


@dataclass
class TrialRecord:
    """One trial's outcome: a row of trials.csv."""

    trial_id: str
    outcome: str
    """COMPLETE (ran to max_epochs), PRUNED (stopped early), FAILED, or RUNNING / PENDING."""
    tune_status: str
    epochs: int
    best_val_mse: float
    best_epoch: int
    last_val_mse: float
    node_id: str
    retries: int
    optuna_number: int | None = None
    optuna_state: str = ""
    error: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    history: pd.DataFrame | None = field(default=None, repr=False)
    checkpoint: Checkpoint | None = field(default=None, repr=False)
    """Tune's latest checkpoint of the trial (it carries the best epoch's weights)."""

    def row(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _NOT_IN_CSV}
        return {**out, **{f"param_{k}": v for k, v in self.params.items()}}


_NOT_IN_CSV = ("params", "history", "checkpoint")


def outcome_of(status: str, last: dict[str, Any], max_epochs: int) -> str:
    """The same rule the searcher uses to tell Optuna: finished, stopped early, or failed."""
    if status == "ERROR" or last.get(DIVERGED):
        return FAILED
    if status in ("RUNNING", "PENDING", "PAUSED"):
        return status
    if not last:
        return FAILED
    return COMPLETE if int(last.get(EPOCH, 0)) >= max_epochs else PRUNED


def load_analysis(folder: Path) -> ExperimentAnalysis:
    try:
        return ExperimentAnalysis(str(folder), default_metric=VAL_MSE, default_mode="min")
    except Exception as e:  # Tune raises ValueError / FileNotFoundError / JSON errors here
        raise MFError(f"{folder}: cannot read Tune's experiment state ({type(e).__name__}: {e})") from e


def collect_trials(folder: Path, *, max_epochs: int, study: optuna.Study | None = None) -> list[TrialRecord]:
    """Every trial of the experiment, in the order Tune created them."""
    analysis = load_analysis(folder)
    numbers = {}
    if study is not None:
        numbers = {t.user_attrs.get(RAY_TRIAL_ID): t for t in study.get_trials(deepcopy=False)}
    records = []
    for trial in analysis.trials:
        history = analysis.trial_dataframes.get(trial.trial_id)
        last = dict(trial.last_result or {})
        if history is not None and VAL_MSE in history and EPOCH in history and len(history):
            finite = history[history[VAL_MSE].map(lambda v: math.isfinite(v))]
            best = finite.loc[finite[VAL_MSE].idxmin()] if len(finite) else None
            best_mse = float(best[VAL_MSE]) if best is not None else math.nan
            best_epoch = int(best[EPOCH]) if best is not None else 0
        else:
            history, best_mse, best_epoch = None, math.nan, 0
        ot = numbers.get(trial.trial_id)
        records.append(
            TrialRecord(
                trial_id=trial.trial_id,
                outcome=outcome_of(trial.status, last, max_epochs),
                tune_status=trial.status,
                epochs=int(last.get(EPOCH, 0)),
                best_val_mse=best_mse,
                best_epoch=best_epoch,
                last_val_mse=float(last.get(VAL_MSE, math.nan)),
                node_id=str(last.get(NODE_ID, "")),
                retries=int(trial.run_metadata.num_failures),
                optuna_number=None if ot is None else ot.number,
                optuna_state="" if ot is None else ot.state.name,
                error=str(last.get("error", "")) or _error_text(trial),
                params=dict(trial.config),
                history=history,
                checkpoint=trial.checkpoint,
            )
        )
    return records


def _error_text(trial: Any) -> str:
    message = getattr(trial.run_metadata, "error_filename", None) or ""
    return "see " + message if message else ""


def best_trial(records: list[TrialRecord]) -> TrialRecord:
    scored = [r for r in records if r.outcome != FAILED and math.isfinite(r.best_val_mse)]
    if not scored:
        raise MFError("no trial reported a finite val_mse yet: nothing to export")
    return min(scored, key=lambda r: r.best_val_mse)


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


def read_trials_csv(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / TRIALS_FILE)
