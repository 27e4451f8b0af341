"""The process that writes a tuning run to MLflow, so that the driver never waits on it.

`tune.extras.tracking.MlflowTracking` starts it (`python -m tune.extras.tracking_writer`) and sends it one JSON
line per event on its stdin: `start` (the experiment), `trial` (a trial that ended, with its whole
per-epoch history) and `end`. It imports MLflow and neither Ray nor torch, runs at a lower CPU
priority than the trials, and logs each trial with three calls (create_run, log_batch,
set_terminated). If the driver dies, stdin ends: what was sent is written, and the parent run stays
RUNNING for a `--resume` to carry on (its id is kept in `<experiment>/mlflow_run.json`).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from tune.record.outcome import FAIL

RUN_FILE = "mlflow_run.json"
"""In the experiment folder: the tracking URI, MLflow experiment id and parent run id."""
EXPERIMENT_DIR_TAG = "mf_tune.experiment_dir"
TRIAL_ID_TAG = "ray_trial_id"
OUTCOME_TAG = "outcome"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag for nested runs (its UI nests by it)
NICE = 10
_METRICS_PER_BATCH, _PARAMS_PER_BATCH = 1000, 100  # MLflow's limits for one log_batch


class Writer:
    """One MLflow parent run for the experiment and a child run per ended trial."""

    def __init__(self, start: dict[str, Any]) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Metric, Param

        self.Metric, self.Param = Metric, Param
        self.client = MlflowClient(tracking_uri=start["tracking_uri"])
        self.metric = start["metric"]
        self.counts: dict[str, int] = {}
        self.best = math.inf
        self.experiment_id, self.parent, self.logged = self._parent_run(start)

    def _parent_run(self, start: dict[str, Any]) -> tuple[str, str, set[str]]:
        """The parent run recorded in the experiment folder (a resumed run with the same tracking
        URI), else a new one; with the trials already logged under it."""
        record = Path(start["experiment_dir"]) / RUN_FILE
        try:
            known = json.loads(record.read_text())
        except (OSError, ValueError):
            known = {}
        if known.get("tracking_uri") == start["tracking_uri"] and known.get("parent_run_id"):
            parent = known["parent_run_id"]
            self.client.update_run(parent, status="RUNNING")
            children = self.client.search_runs(
                [known["experiment_id"]],
                filter_string=f"tags.`{PARENT_TAG}` = '{parent}'",
                max_results=50_000,
            )
            return known["experiment_id"], parent, {r.data.tags.get(TRIAL_ID_TAG, "") for r in children}
        experiment = self.client.get_experiment_by_name(start["experiment_name"])
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else self.client.create_experiment(
                start["experiment_name"], artifact_location=start.get("artifact_location")
            )
        )
        run = self.client.create_run(
            experiment_id,
            start_time=start["start_time"],
            run_name=start["experiment_name"],
            tags={EXPERIMENT_DIR_TAG: start["experiment_dir"]},
        )
        params = [self.Param(*_param(k, v)) for k, v in start.get("params", {}).items()]
        for i in range(0, len(params), _PARAMS_PER_BATCH):
            self.client.log_batch(run.info.run_id, params=params[i : i + _PARAMS_PER_BATCH])
        info = {
            "tracking_uri": start["tracking_uri"],
            "experiment_id": experiment_id,
            "parent_run_id": run.info.run_id,
        }
        tmp = record.with_name(f".{RUN_FILE}.tmp")
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        os.replace(tmp, record)
        return experiment_id, run.info.run_id, set()

    def trial(self, event: dict[str, Any]) -> None:
        values = [m[self.metric] for _, _, m in event["steps"] if _finite(m.get(self.metric))]
        self.counts[event["outcome"]] = self.counts.get(event["outcome"], 0) + 1
        self.best = min([self.best, *values])
        if event["trial_id"] in self.logged:  # ended before a driver restart, logged then
            return
        end = event["end_time"]
        run = self.client.create_run(
            self.experiment_id,
            start_time=event["start_time"],
            run_name=event["trial_id"],
            tags={PARENT_TAG: self.parent, TRIAL_ID_TAG: event["trial_id"], OUTCOME_TAG: event["outcome"]},
        )
        # The history, step = epoch; a diverged epoch's inf is left out (the outcome says FAIL).
        metrics = [
            self.Metric(key, float(value), timestamp, int(epoch))
            for epoch, timestamp, logged in event["steps"]
            for key, value in logged.items()
            if _finite(value)
        ]
        if values:
            metrics.append(self.Metric(f"best_{self.metric}", min(values), end, 0))
        metrics.append(self.Metric("epochs", max((int(e) for e, _, _ in event["steps"]), default=0), end, 0))
        params = [self.Param(*_param(k, v)) for k, v in event["params"].items()][:_PARAMS_PER_BATCH]
        for i in range(0, len(metrics), _METRICS_PER_BATCH):
            batch = metrics[i : i + _METRICS_PER_BATCH]
            self.client.log_batch(run.info.run_id, metrics=batch, params=params if i == 0 else [])
        status = "FAILED" if event["outcome"] == FAIL else "FINISHED"  # MLflow's run status names
        self.client.set_terminated(run.info.run_id, status, end_time=end)
        self.logged.add(event["trial_id"])

    def end(self, event: dict[str, Any]) -> None:
        now = _ms()
        summary = [self.Metric(f"trials_{k.lower()}", n, now, 0) for k, n in sorted(self.counts.items())]
        if _finite(self.best):
            summary.append(self.Metric(f"best_{self.metric}", self.best, now, 0))
        self.client.log_batch(self.parent, metrics=summary)
        self.client.set_terminated(self.parent, event["status"], end_time=now)
        print(
            f"parent run {self.parent} {event['status']}: {sum(self.counts.values())} trials, "
            f"{time.process_time():.1f} s of CPU in this process",
            flush=True,
        )


def _sqlite_without_fsync_per_commit() -> None:
    """SQLite stores in WAL mode with synchronous=NORMAL, set on every connection this process
    opens (SQLAlchemy's public `connect` event; MLflow makes the engine). MLflow commits six times
    a trial, and in SQLite's default mode each commit waits for an fsync (about 9 ms each here); in
    WAL mode with NORMAL a commit does not, and a crash still loses no committed run that was
    checkpointed, and never corrupts the store. Readers (`mlflow ui`) then do not block it either."""
    import sqlalchemy

    @sqlalchemy.event.listens_for(sqlalchemy.engine.Engine, "connect")
    def _pragmas(dbapi_connection: Any, _: Any) -> None:
        if type(dbapi_connection).__module__.startswith("sqlite3"):
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()


def main() -> int:
    # Below the trials and the driver: it only uses CPU they leave (a backlog drains at the end).
    os.nice(NICE)
    # MLflow's usage telemetry would wrap each of thousands of calls (and try the network); a
    # user who wants it sets MLFLOW_DISABLE_TELEMETRY=false.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    _sqlite_without_fsync_per_commit()
    writer: Writer | None = None
    for line in sys.stdin:
        event = json.loads(line)
        if event["op"] == "start":
            writer = Writer(event)
            print(f"parent run {writer.parent}, {len(writer.logged)} trials logged before", flush=True)
        elif writer is None:
            raise RuntimeError(f"{event['op']!r} before 'start'")
        elif event["op"] == "trial":
            writer.trial(event)
        elif event["op"] == "end":
            writer.end(event)
    return 0


def _param(key: str, value: Any) -> tuple[str, str]:
    return str(key), str(value)[:6000]  # MLflow's limit on a param value


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _ms() -> int:
    return int(time.time() * 1000)


if __name__ == "__main__":
    sys.exit(main())
