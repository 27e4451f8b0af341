"""Opt-in experiment tracking with MLflow (`--mlflow [URI]`), off the driver's hot path.

One parent run for the experiment, one child run per trial with its sampled params, its per-epoch
`val_mse` as a metric history (step = epoch), its outcome (tag `outcome`: COMPLETE / PRUNED /
FAIL, and run status FINISHED or FAILED) and its best value; the exported best is tagged
afterwards (`tag_best`). The default store is SQLite in the experiment folder
(`sqlite:///<experiment>/mlflow.db`, artifacts in `<experiment>/mlartifacts/`): MLflow 3's own
default kind of store, no server needed (its file store is deprecated), `mlflow ui
--backend-store-uri sqlite:///<experiment>/mlflow.db` shows it. Any other tracking URI works too.

Why a callback and a second process: the driver is what limits a tuning run on few cores, and
MLflow costs about 15 ms of CPU a trial (SQLAlchemy, measured). The callback only appends each
epoch's values to the trial's buffer; when a trial ends its whole history goes, as one JSON line
through a thread, to `tune.extras.tracking_writer`, a process at lower priority that makes the MLflow
calls. The run's end waits for it to catch up.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ray.tune import Callback

from mf.errors import MFError
from mf.metrics import EPOCH, VAL_MSE
from tune.extras.tracking_writer import OUTCOME_TAG, PARENT_TAG, RUN_FILE, TRIAL_ID_TAG
from tune.record.keys import ALREADY_LOGGED
from tune.record.outcome import FAIL, trial_outcome
from tune.settings import module_env

DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
WRITER_LOG = "mlflow_writer.log"
BEST_TAG = "mf_tune.best"
"""Set to "true" on the child run of the exported best trial (and the parent names it)."""


def default_tracking_uri(experiment_dir: Path) -> str:
    return f"sqlite:///{Path(experiment_dir).resolve() / DB_FILE}"


def check_tracking_uri(uri: str) -> str:
    """A `--mlflow` value: a tracking URI with a scheme (sqlite:///..., http(s)://..., file:...,
    databricks) as given, or a local folder, which MLflow treats as a `file:` store (deprecated in
    MLflow 3, but it works); made absolute, since the writer runs elsewhere than the user's shell."""
    if not uri.strip():
        raise MFError(
            "--mlflow: an empty tracking URI; give e.g. sqlite:///path/mlflow.db or http://host:5000"
        )
    if ":" in uri.split("/", 1)[0] or uri in ("databricks", "databricks-uc"):  # a scheme, or MLflow's names
        return uri
    return Path(uri).expanduser().resolve().as_uri()


class MlflowTracking(Callback):
    """A `ray.tune.Callback` logging the experiment to MLflow through `tune.extras.tracking_writer`.

    The writer process starts in `setup` (Tune calls it as `fit()` begins; MLflow's import and the
    store's creation, about 3 s of CPU, happen there, not in the driver). `on_experiment_end` sends
    the trials the time budget stopped (Tune calls no per-trial hook for them), ends the parent run
    and waits up to `drain_timeout_s` for the writer (a failed writer becomes a warning and
    `error`, so the run still exports); `close()` does the same for a run that never reached Tune,
    and raises. Pickles as its settings only (Tune stores callbacks with the experiment).
    """

    def __init__(
        self,
        experiment_dir: Path,
        *,
        experiment_name: str,
        max_epochs: int,
        tracking_uri: str | None = None,
        params: Mapping[str, Any] | None = None,
        metrics: Sequence[str] = (VAL_MSE,),
        drain_timeout_s: float = 300.0,
    ) -> None:
        if importlib.util.find_spec("mlflow") is None:
            raise MFError("--mlflow needs MLflow, which is not installed; pip install 'mf-tune[mlflow]'")
        self.experiment_dir = Path(experiment_dir).resolve()
        self.experiment_dir.mkdir(parents=True, exist_ok=True)
        self.tracking_uri = (
            check_tracking_uri(tracking_uri) if tracking_uri else default_tracking_uri(self.experiment_dir)
        )
        self.max_epochs = max_epochs
        self.metrics = tuple(metrics)
        self.drain_timeout_s = drain_timeout_s
        self.experiment_name = experiment_name
        self.params = dict(params or {})
        self._default_store = tracking_uri is None
        self._reset()

    def _reset(self) -> None:
        self._steps: dict[str, list[tuple[int, int, dict[str, float]]]] = {}
        self._started: dict[str, int] = {}
        self._sent: set[str] = set()
        self._queue: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self.error: MFError | None = None
        """Set when the writer failed at the end of the run (also printed as a warning)."""

    # Tune pickles the RunConfig, callbacks included, into the experiment (tuner.pkl) and
    # `Tuner.restore` uses that copy: only the settings travel, and a restored one starts afresh.
    def __getstate__(self) -> dict[str, Any]:
        keep = ("experiment_dir", "tracking_uri", "max_epochs", "metrics", "drain_timeout_s")
        return {k: self.__dict__[k] for k in (*keep, "experiment_name", "params", "_default_store")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def start(self) -> None:
        """Start the writer process (`setup` does, when Tune starts the run); idempotent."""
        if self._proc is not None or self._closed:
            return
        log = (self.experiment_dir / WRITER_LOG).open("a")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tune.extras.tracking_writer"],
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=log,
            env=module_env(),
            text=True,
        )
        log.close()
        self._thread = threading.Thread(target=self._pump, name="mlflow-tracking", daemon=True)
        self._thread.start()
        artifacts = (self.experiment_dir / ARTIFACTS_DIR).as_uri() if self._default_store else None
        self._queue.put(
            {
                "op": "start",
                "tracking_uri": self.tracking_uri,
                "experiment_name": self.experiment_name,
                "experiment_dir": str(self.experiment_dir),
                "artifact_location": artifacts,
                "params": self.params,
                "metric": VAL_MSE,
                "start_time": _ms(),
            }
        )

    # --------------------------------------------------------------- Tune's hooks (cheap)
    def setup(self, **info: Any) -> None:
        self.start()

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._started.setdefault(trial.trial_id, _ms())

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        if result.get(ALREADY_LOGGED) or EPOCH not in result:
            return
        values = {k: result[k] for k in self.metrics if isinstance(result.get(k), (int, float))}
        self._steps.setdefault(trial.trial_id, []).append((int(result[EPOCH]), _ms(), values))

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._send(trial, trial_outcome("TERMINATED", trial.last_result or {}, self.max_epochs))

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._send(trial, FAIL)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        for trial in trials:
            if trial.trial_id in self._started and trial.trial_id not in self._sent:
                self._send(trial, trial_outcome(trial.status, trial.last_result or {}, self.max_epochs))
        try:
            self.close()
        except MFError as e:  # raised inside Tune's loop it would cost the run its export
            self.error = e
            print(f"warning: {e}", file=sys.stderr, flush=True)

    # --------------------------------------------------------------- the writer
    def close(self, status: str = "FINISHED") -> None:
        """End the parent run with `status` (FINISHED, FAILED, KILLED) and wait for the writer.
        Raises MFError naming its log if the writer failed (a wrong URI, an unreachable server)."""
        self.start()  # a run that ended before Tune started still ends its parent run
        if self._closed or self._proc is None or self._thread is None:
            return
        self._closed = True
        self._queue.put({"op": "end", "status": status, "metric": VAL_MSE})
        self._queue.put(None)
        self._thread.join(self.drain_timeout_s)
        try:
            code = self._proc.wait(max(1.0, self.drain_timeout_s))
        except subprocess.TimeoutExpired:
            self._proc.kill()
            code = self._proc.wait()
        if code != 0:
            log = self.experiment_dir / WRITER_LOG
            last = (log.read_text(errors="replace").strip().splitlines() or ["(empty)"])[-1]
            raise MFError(f"--mlflow {self.tracking_uri}: logging to MLflow failed ({last}); see {log}")

    def _send(self, trial: Any, outcome: str) -> None:
        if trial.trial_id in self._sent or self._closed:
            return
        self._sent.add(trial.trial_id)
        now = _ms()
        self._queue.put(
            {
                "op": "trial",
                "trial_id": trial.trial_id,
                "params": _flat(trial.config),
                "outcome": outcome,
                "start_time": self._started.get(trial.trial_id, now),
                "end_time": now,
                "steps": self._steps.pop(trial.trial_id, []),
            }
        )

    def _pump(self) -> None:
        """The thread that hands events to the writer; a write that blocks blocks only here."""
        assert self._proc is not None and self._proc.stdin is not None
        alive = True
        while (event := self._queue.get()) is not None:
            if not alive:
                continue
            try:
                self._proc.stdin.write(json.dumps(event, default=str) + "\n")
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError):
                alive = False  # the writer died: said now, and close() reports its log
                print(
                    f"warning: --mlflow: the MLflow writer stopped; later trials are not tracked (see "
                    f"{self.experiment_dir / WRITER_LOG})",
                    file=sys.stderr,
                    flush=True,
                )
        with contextlib.suppress(OSError):
            self._proc.stdin.close()


def tag_best(
    experiment_dir: Path,
    trial_id: str,
    *,
    metrics: Mapping[str, float] | None = None,
    artifacts: Iterable[Path] = (),
) -> str:
    """Tag the exported best trial's child run (`mf_tune.best` = true), name it on the parent run
    (tag `best_trial_id`, and `metrics` such as the export's val_mse as `best/<name>`), and copy
    `artifacts` (files, e.g. best/config.yaml and metrics.json) into its run. Returns the child run's id.

    Called by the driver after the export, once `MlflowTracking` has ended (its writer has logged
    every trial); it opens the store recorded in `<experiment>/mlflow_run.json`.
    """
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    try:
        record = json.loads((Path(experiment_dir) / RUN_FILE).read_text())
    except (OSError, ValueError) as e:
        raise MFError(
            f"{experiment_dir}: no MLflow run recorded ({RUN_FILE}: {e}); was it run with --mlflow?"
        ) from e
    client = MlflowClient(tracking_uri=record["tracking_uri"])
    parent = record["parent_run_id"]
    found = client.search_runs(
        [record["experiment_id"]],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent}' and tags.`{TRIAL_ID_TAG}` = '{trial_id}'",
        max_results=1,
    )
    if not found:
        raise MFError(
            f"{record['tracking_uri']}: no MLflow run of trial {trial_id} under parent run {parent}"
        )
    child = found[0].info.run_id
    client.set_tag(child, BEST_TAG, "true")
    client.set_tag(parent, "best_trial_id", trial_id)
    client.set_tag(parent, "best_run_id", child)
    now = _ms()
    finite = {
        k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float)) and math.isfinite(v)
    }
    if finite:
        # MLflow's metric names allow no '@' (precision@10): spelt precision_at_10 there.
        named = {f"best/{k.replace('@', '_at_')}": v for k, v in finite.items()}
        client.log_batch(parent, metrics=[Metric(k, v, now, 0) for k, v in named.items()])
    for path in artifacts:
        client.log_artifact(child, str(path), artifact_path="best")
    return child


def read_runs(experiment_dir: Path) -> tuple[Any, list[Any]]:
    """The parent run and its child runs as MLflow's client returns them (for tests and tools)."""
    from mlflow import MlflowClient

    record = json.loads((Path(experiment_dir) / RUN_FILE).read_text())
    client = MlflowClient(tracking_uri=record["tracking_uri"])
    children = client.search_runs(
        [record["experiment_id"]],
        filter_string=f"tags.`{PARENT_TAG}` = '{record['parent_run_id']}'",
        max_results=50_000,
    )
    return client.get_run(record["parent_run_id"]), children


def _flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _ms() -> int:
    return int(time.time() * 1000)


__all__ = ["BEST_TAG", "OUTCOME_TAG", "MlflowTracking", "default_tracking_uri", "read_runs", "tag_best"]
