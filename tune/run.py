"""`python -m tune.run`: tune MFAdvanced with Ray Tune, Optuna TPE and ASHA, then export the best.

    python -m tune.run --data ../shared/data/ml-latest-small --time-budget-s 300 --num-samples -1

Training keys that are not tuned (data, split, batch size, seed, ...) take the same flags as
`python -m mf.train`; what is tuned comes from --space.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from mf.cli_args import add_config_flags, explicit_keys
from mf.errors import MFError, user_errors_exit
from search_spaces import load_space
from tune.export.best import collect_and_write_trials, export_best, export_best_ranking
from tune.export.confirmation import format_confirmation, read_summary
from tune.export.summary import BEST_RANKING_DIR, format_export, format_ranking_export, headline
from tune.record.lock import IN_RAY_JOB, writer_lock
from tune.record.outcome import COMPLETE, FAIL, PRUNED
from tune.record.results import TrialRecord, epochs_spent
from tune.report.fidelity import pruning_fidelity
from tune.search.interrupts import EXIT_CODE, Interrupted, sigterm_as_sigint
from tune.settings import (
    ExperimentSettings,
    RunOptions,
    doc,
    experiment_config,
    read_experiment,
    recorded_settings,
)

SMOKE_TEST = {"num_samples": 4, "max_epochs": 3, "grace_period": 1, "confirm_top": 2, "confirm_seeds": 1}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tune.run",
        description="Tune MFAdvanced on MovieLens: Ray Tune runs trials, Optuna TPE proposes, ASHA stops.",
    )
    group = parser.add_argument_group("experiment")
    for f in fields(ExperimentSettings):
        kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
        group.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=kind,
            default=argparse.SUPPRESS,
            help=f"{doc(f.name)} (default {f.default!r})",
        )
    group.add_argument(
        "--resume",
        nargs="?",
        const="",
        metavar="EXPERIMENT",
        help="continue an interrupted experiment (its folder; without one: --storage-path/--name); "
        "its settings, space and config come from its experiment.yaml",
    )
    group.add_argument(
        "--report", action="store_true", help="write <experiment>/report/report.html at the end"
    )
    group.add_argument("--smoke-test", action="store_true", help=f"a tiny run for CI: {SMOKE_TEST}")
    view = parser.add_argument_group("what the run shows (not saved with the experiment)")
    view.add_argument(
        "--verbose", action="store_true", help="Ray's own console output instead of one progress line"
    )
    view.add_argument(
        "--dashboard",
        nargs="?",
        const=8080,
        type=int,
        metavar="PORT",
        help="serve the study with optuna-dashboard on 127.0.0.1:PORT (default 8080) while the run goes on",
    )
    view.add_argument(
        "--mlflow",
        nargs="?",
        const="",
        metavar="URI",
        help="track the run in MLflow: a parent run, a run per trial (default store: "
        "sqlite:///<experiment>/mlflow.db; `mlflow ui --backend-store-uri` that URI shows it)",
    )
    group.add_argument(
        "--no-export",
        action="store_true",
        help="skip writing best/ at the end (trials.csv is always written)",
    )
    # epochs is ASHA's max_t (--max-epochs) and ensemble the refit's (--ensemble, a setting); the
    # rest are the training keys of `python -m mf.train`.
    add_config_flags(parser, exclude=("epochs", "ensemble"))
    return parser


def settings_from_args(args: argparse.Namespace) -> ExperimentSettings:
    values: dict[str, Any] = {
        f.name: getattr(args, f.name) for f in fields(ExperimentSettings) if f.name in vars(args)
    }
    if args.smoke_test:
        values = {**SMOKE_TEST, **values}
    if values.get("time_budget_s") is not None and "num_samples" not in values:
        values["num_samples"] = -1  # a budget alone: as many trials as it allows
    try:
        return ExperimentSettings(**values)
    except TypeError as e:
        raise MFError(f"experiment settings: {e}") from e


def format_summary(
    records: list[TrialRecord],
    settings: ExperimentSettings,
    *,
    seconds: float,
    exported: dict[str, Any] | None,
    folder: Path,
    ranking_export: dict[str, Any] | None = None,
    top: int = 5,
) -> str:
    """The end-of-run summary: its headline (the exported model's error on data it never saw), then
    trials and epochs, the top trials, how well ASHA's rungs ranked them, the confirmation, and what
    was exported against the tutorial's configuration."""
    counts = {k: sum(r.outcome == k for r in records) for k in (COMPLETE, PRUNED, FAIL)}
    # A trial the budget stopped before its first epoch is FAIL too (tune.record.outcome); say which they are.
    unstarted = sum(r.outcome == FAIL and r.epochs == 0 and not r.error for r in records)
    spent, fifo = epochs_spent(records), len(records) * settings.max_epochs
    lines = [headline(exported)] if exported is not None else []
    lines += [
        f"{len(records)} trials in {seconds:.0f} s: {counts[COMPLETE]} complete, {counts[PRUNED]} pruned by ASHA, "
        f"{counts[FAIL]} failed"
        + (f" ({unstarted} of them stopped by the budget before their first epoch)" if unstarted else ""),
        f"epochs spent: {spent} (ASHA) against {fifo} had every trial run to {settings.max_epochs} "
        f"({spent / fifo:.0%})"
        if fifo
        else "epochs spent: 0",
        f"top {min(top, len(records))} trials by best val_mse:",
    ]
    scored = sorted((r for r in records if math.isfinite(r.best_val_mse)), key=lambda r: r.best_val_mse)
    for r in scored[:top]:
        params = ", ".join(f"{k}={_short(v)}" for k, v in r.params.items())
        lines.append(
            f"  {r.trial_id}  val_mse {r.best_val_mse:.4f} @ epoch {r.best_epoch:<3d} {r.outcome:<8s} {params}"
        )
    fidelity = pruning_fidelity(records, settings)
    lines += fidelity.lines()
    warning = fidelity.warning(settings)
    if warning:
        lines.append(warning)
    lines += format_confirmation(read_summary(folder))
    if exported is not None:
        lines.append(format_export(exported, folder / "best"))
    if ranking_export is not None:
        lines.append(format_ranking_export(ranking_export, folder / BEST_RANKING_DIR))
    return "\n".join(lines)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@user_errors_exit
def main(argv: list[str] | None = None) -> int:
    started = time.time()  # --time-budget-s counts from here: the load and Ray's start spend it too
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args)
    if IN_RAY_JOB in os.environ and not Path(settings.storage_path).is_absolute():
        raise MFError(
            f"--storage-path: {settings.storage_path!r} is relative, and a Ray job runs in a temporary copy of "
            "its working dir that nobody will find again; give an absolute path on shared storage"
        )
    options = RunOptions(
        verbose=args.verbose, dashboard_port=args.dashboard, mlflow_uri=args.mlflow, started=started
    )
    try:
        with sigterm_as_sigint():
            return run_and_export(args, settings, options)
    except Interrupted as e:  # the first Ctrl-C or SIGTERM: the work done is saved
        print(e, file=sys.stderr)
    except KeyboardInterrupt:  # a second one, or one outside the search and the confirmation
        folder = Path(args.resume) if args.resume else settings.experiment_dir
        print(
            f"interrupted: stopped at once. What was saved in {folder} can be resumed with "
            f"`python -m tune.run --resume {folder}` or exported with `python -m tune.export {folder}`",
            file=sys.stderr,
        )
    return EXIT_CODE


def run_and_export(args: argparse.Namespace, settings: ExperimentSettings, options: RunOptions) -> int:
    """The experiment (new or resumed), its export, report and summary, holding the folder's writer
    lock (tune.record.lock) throughout; 0 when done.

    Raises Interrupted when a SIGINT or SIGTERM stopped the search or the confirmation (nothing is
    exported then), KeyboardInterrupt when a second one came, MFError for a user's mistake or when
    another process writes the folder."""
    if args.resume is None:
        with writer_lock(settings.experiment_dir, "tune.run"):
            return _run_and_export(args, settings, options)
    folder = Path(args.resume) if args.resume else settings.experiment_dir
    read_experiment(folder)  # an experiment folder, or a one-line error (before a lock file is made there)
    with writer_lock(folder, "tune.run --resume"):
        return _run_and_export(args, settings, options)


def _run_and_export(args: argparse.Namespace, settings: ExperimentSettings, options: RunOptions) -> int:
    if args.resume is not None:
        from tune.search.experiment import resume_experiment  # imports Ray: only once the input is checked

        folder = Path(args.resume) if args.resume else settings.experiment_dir
        outcome = resume_experiment(folder, address=getattr(args, "address", None), options=options)
        settings = recorded_settings(read_experiment(folder))
    else:
        fixed = explicit_keys(args)
        space = load_space(settings.space)
        space.check_against(fixed)
        base = experiment_config(fixed, where="command line")
        from tune.search.experiment import run_experiment  # imports Ray: only once the input is checked

        outcome = run_experiment(settings, base, space, options)
    folder = outcome.experiment_dir
    records = collect_and_write_trials(folder)
    exported = ranking_export = None
    if not args.no_export:
        # Bound by a budget, the run does not train the tutorial's reference after it (see export_best).
        exported = export_best(
            folder,
            records=records,
            quiet=True,
            train_reference=settings.time_budget_s is None,
            deadline=outcome.deadline,
            dataset=outcome.dataset,
        )
        ranking_export = export_best_ranking(
            folder, records=records, quiet=True, deadline=outcome.deadline, dataset=outcome.dataset
        )
    if exported is not None and options.mlflow_uri is not None:
        from tune.extras.tracking import tag_best

        best = folder / "best"
        try:
            tag_best(
                folder,
                exported["trial_id"],
                metrics={k: v for k, v in exported.items() if k.startswith(("val_", "test_"))},
                artifacts=[best / "config.yaml", best / "metrics.json"],
            )
        except MFError as e:  # the export is done and stays; the summary still comes
            print(f"warning: --mlflow: the export was not tagged in MLflow: {e}", file=sys.stderr)
    if args.report:
        from tune.report.page import write_report

        print(f"report: {write_report(folder)}")
    # The summary comes last, so that it is what a terminal or a job's log ends with.
    print(
        format_summary(
            records,
            settings,
            seconds=outcome.seconds,
            exported=exported,
            folder=folder,
            ranking_export=ranking_export,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
