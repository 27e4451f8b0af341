"""What happened to each trial, read back from an experiment folder (finished, running or interrupted).

Tune's experiment state lists the trials, with their status and params; each trial's folder
(tune/trial_files.py) gives its results and checkpoints, as they were when the driver last wrote
them, which may be after Tune's last snapshot; the Optuna study gives what the searcher was told.
`trials.csv` joins them.
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
from ray.tune import ExperimentAnalysis

from mf.atomic import atomic_write_text
from mf.errors import MFError
from mf.metrics import EPOCH, VAL_MSE
from tune.searcher import DIVERGED, RAY_TRIAL_ID
from tune.trainable import NODE_ID
from tune.trial_files import checkpoint_files, has_ended, read_results, trial_dirname

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
    trial_dir: Path | None = field(default=None, repr=False)
    """The trial's folder: its results and checkpoints (the newest carries the best epoch's weights)."""

    def has_checkpoint(self) -> bool:
        return self.trial_dir is not None and bool(checkpoint_files(self.trial_dir))

    def row(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _NOT_IN_CSV}
        return {**out, **{f"param_{k}": v for k, v in self.params.items()}}


_NOT_IN_CSV = ("params", "history", "trial_dir")


def outcome_of(status: str, last: dict[str, Any], max_epochs: int) -> str:
    """The same rule the searcher uses to tell Optuna: finished, stopped early, or failed."""
    if status == "ERROR" or last.get(DIVERGED):
        return FAILED
    if status in ("RUNNING", "PENDING", "PAUSED"):
        return status
    if EPOCH not in last:  # stopped before its first epoch (Tune may still have noted `done`)
        return FAILED
    return COMPLETE if int(last.get(EPOCH, 0)) >= max_epochs else PRUNED


def load_analysis(folder: Path) -> ExperimentAnalysis:
    try:
        return ExperimentAnalysis(str(folder), default_metric=VAL_MSE, default_mode="min")
    except Exception as e:  # Tune raises ValueError / FileNotFoundError / JSON errors here
        raise MFError(f"{folder}: cannot read Tune's experiment state ({type(e).__name__}: {e})") from e


def collect_trials(folder: Path, *, max_epochs: int, study: optuna.Study | None = None) -> list[TrialRecord]:
    """Every trial of the experiment, in the order Tune created them, then any trial that only the
    study and the folders know (one that ended after Tune's last snapshot of a driver that died)."""
    analysis = load_analysis(folder)
    by_ray_id = {}
    if study is not None:
        by_ray_id = {t.user_attrs.get(RAY_TRIAL_ID): t for t in study.get_trials(deepcopy=False)}
    records = []
    for trial in analysis.trials:
        history = analysis.trial_dataframes.get(trial.trial_id)
        if history is not None and len(history):
            # The folder's last result: Tune's record of it is only as new as its last snapshot.
            last = {k: v for k, v in history.iloc[-1].items() if not _is_nan(v)}
        else:
            last = dict(trial.last_result or {})
        records.append(
            _record(
                trial.trial_id,
                status=trial.status,
                last=last,
                history=history,
                params=dict(trial.config),
                max_epochs=max_epochs,
                retries=int(trial.run_metadata.num_failures),
                error=_error_text(trial),
                study_trial=by_ray_id.get(trial.trial_id),
                trial_dir=folder / trial_dirname(trial.trial_id),
            )
        )
    known = {r.trial_id for r in records}
    for ray_id, ot in by_ray_id.items():
        trial_dir = folder / trial_dirname(str(ray_id))
        if ray_id is None or ray_id in known or not trial_dir.is_dir():
            continue
        results = read_results(trial_dir)
        last = results[-1] if results else {}
        records.append(
            _record(
                str(ray_id),
                status="TERMINATED" if last and has_ended(last) else "UNKNOWN",
                last=last,
                history=pd.DataFrame(results) if results else None,
                params=dict(ot.params),
                max_epochs=max_epochs,
                retries=0,
                error="",
                study_trial=ot,
                trial_dir=trial_dir,
            )
        )
    return records


def _record(
    trial_id: str,
    *,
    status: str,
    last: dict[str, Any],
    history: pd.DataFrame | None,
    params: dict[str, Any],
    max_epochs: int,
    retries: int,
    error: str,
    study_trial: optuna.trial.FrozenTrial | None,
    trial_dir: Path,
) -> TrialRecord:
    if history is not None and VAL_MSE in history and EPOCH in history and len(history):
        finite = history[history[VAL_MSE].map(lambda v: math.isfinite(v))]
        best = finite.loc[finite[VAL_MSE].idxmin()] if len(finite) else None
        best_mse = float(best[VAL_MSE]) if best is not None else math.nan
        best_epoch = int(best[EPOCH]) if best is not None else 0
    else:
        history, best_mse, best_epoch = None, math.nan, 0
    return TrialRecord(
        trial_id=trial_id,
        outcome=outcome_of(status, last, max_epochs),
        tune_status=status,
        epochs=int(last.get(EPOCH, 0)),
        best_val_mse=best_mse,
        best_epoch=best_epoch,
        last_val_mse=float(last.get(VAL_MSE, math.nan)),
        node_id=str(last.get(NODE_ID, "")),
        retries=retries,
        optuna_number=None if study_trial is None else study_trial.number,
        optuna_state="" if study_trial is None else study_trial.state.name,
        error=str(last.get("error", "")) or error,
        params=params,
        history=history,
        trial_dir=trial_dir,
    )


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _error_text(trial: Any) -> str:
    message = getattr(trial.run_metadata, "error_filename", None) or ""
    return "see " + message if message else ""


def best_trial(records: list[TrialRecord]) -> TrialRecord:
    scored = [r for r in records if r.outcome != FAILED and math.isfinite(r.best_val_mse)]
    if not scored:
        raise MFError("no trial reported a finite val_mse yet: nothing to export")
    best = min(r.best_val_mse for r in scored)
    tied = [r for r in scored if r.best_val_mse == best]
    # Trials that tie (the same params train the same curve) may not all have kept their
    # checkpoint (tune/retention.py keeps the best few): prefer one that has.
    return next((r for r in tied if r.has_checkpoint()), tied[0])


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
