"""Export the best trial of an experiment: `<experiment>/best/` and `<experiment>/trials.csv`.

`best/config.yaml` retrains it (`python -m mf.train --config best/config.yaml`), `best/model.pt`
holds the best trial's own weights at its best epoch (with the id mapping), `best/metrics.json`
holds its validation metrics and, where the split held out a test part, its test metrics,
computed once here and never seen by the search.

    python -m tune.export runs/mf-tune
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import optuna

from mf.atomic import write_json, write_yaml
from mf.config import from_dict
from mf.errors import MFError, user_errors_exit
from mf.metrics import prefixed
from mf.training import Trainer, dataset_for
from tune.results import TrialRecord, best_trial, collect_trials, write_trials_csv
from tune.settings import read_experiment
from tune.study_storage import exists, open_storage, study_location
from tune.trial_files import newest_checkpoint

BEST_DIR = "best"


def open_study(folder: Path, experiment: dict[str, Any]) -> optuna.Study | None:
    """The experiment's Optuna study, or None if it has none (yet)."""
    settings = experiment["settings"]
    location = study_location(folder, settings.get("study_storage"))
    if not exists(location):
        return None
    try:
        return optuna.load_study(study_name=settings["name"], storage=open_storage(location))
    except KeyError:
        return None


def latest_checkpoint_state(folder: Path, record: TrialRecord) -> dict[str, Any]:
    """The trial's newest checkpoint: it carries the weights of the trial's best epoch so far."""
    state = newest_checkpoint(record.trial_dir) if record.trial_dir is not None else None
    if state is None:
        raise MFError(f"{folder}: trial {record.trial_id} has no readable checkpoint to export")
    return state


def collect_and_write_trials(folder: Path) -> list[TrialRecord]:
    """Read every trial of the experiment and (re)write its trials.csv."""
    experiment = read_experiment(folder)
    max_epochs = int(experiment["settings"]["max_epochs"])
    records = collect_trials(folder, max_epochs=max_epochs, study=open_study(folder, experiment))
    write_trials_csv(folder, records)
    return records


def export_best(
    folder: str | os.PathLike, *, records: list[TrialRecord] | None = None, quiet: bool = False
) -> dict[str, Any]:
    """Write best/ (and trials.csv, unless `records` were just written) for the experiment in `folder`."""
    folder = Path(folder).resolve()
    if records is None:
        records = collect_and_write_trials(folder)
    best = best_trial(records)

    # The model: the best trial's latest checkpoint, rewound to its best epoch.
    state = latest_checkpoint_state(folder, best)
    config = from_dict(state["config"], where=f"trial {best.trial_id} checkpoint").replace(device="auto")
    dataset = dataset_for(config)
    trainer = Trainer(config, dataset, device="cpu")
    trainer.load_state(state, source=f"trial {best.trial_id} checkpoint")
    trainer.rewind_to_best()
    if trainer.epoch != best.best_epoch:
        # Only when the run ended (time budget) between the trial's best epoch and its next checkpoint.
        print(
            f"note: trial {best.trial_id} was best at epoch {best.best_epoch}, but its last checkpoint "
            f"holds epoch {trainer.epoch} as its best; exporting that"
        )
    config = config.replace(epochs=trainer.epoch)
    trainer.config = config
    metrics: dict[str, Any] = {
        "trial_id": best.trial_id,
        "optuna_number": best.optuna_number,
        "epoch": trainer.epoch,
        **prefixed(trainer.evaluate("val"), "val"),
    }
    if dataset.test is not None:
        metrics.update(prefixed(trainer.evaluate("test"), "test"))
    metrics["params"] = best.params

    # Write into a fresh folder, then swap it in: a crash leaves the old export whole.
    staging = Path(tempfile.mkdtemp(prefix=".best-", dir=folder))
    try:
        write_yaml(staging / "config.yaml", config.to_dict())
        write_json(staging / "metrics.json", metrics)
        trainer.save_checkpoint(staging / "model.pt")
        target, old = folder / BEST_DIR, folder / ".best-old"
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not quiet:
        print(
            f"best trial {best.trial_id} (epoch {trainer.epoch}): val_mse {metrics['val_mse']:.4f}"
            + (f", test_mse {metrics['test_mse']:.4f}" if "test_mse" in metrics else "")
            + f"; exported to {folder / BEST_DIR}"
        )
    return metrics


@user_errors_exit
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tune.export",
        description="Write <experiment>/best/ (config.yaml, metrics.json, model.pt) and trials.csv.",
    )
    parser.add_argument("experiment", type=Path, help="experiment folder (e.g. runs/mf-tune)")
    args = parser.parse_args(argv)
    export_best(args.experiment)
    return 0


if __name__ == "__main__":
    sys.exit(main())
