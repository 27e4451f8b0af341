"""`python -m tune.report <experiment>`: one self-contained HTML page about a tuning experiment.

People would rather look than read a table of 200 trials. The page (`<experiment>/report/report.html`,
figures embedded as data URIs, the PNGs beside it) is drawn from what the experiment folder holds
now, through `tune.record.results.collect_trials` and the Optuna study, so it works on a finished, running
or interrupted experiment, and without Ray. The best configuration against the tutorial's comes from
the export (`best/metrics.json`, written by tune.run or `python -m tune.export`); the report trains
nothing.

    python -m tune.report runs/mf-tune
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mf.atomic import atomic_write, atomic_write_text
from mf.errors import MFError, user_errors_exit
from tune.export.confirmation import Confirmed, read_summary
from tune.export.summary import BEST_DIR, METRICS_FILE, RANK_K, headline
from tune.record.outcome import COMPLETE, FAIL, PRUNED
from tune.record.results import TrialRecord, best_trial, collect_trials
from tune.record.study import load_experiment_study
from tune.report.fidelity import PruningFidelity, pruning_fidelity
from tune.report.figures import ReportFigure, build_figures
from tune.settings import ExperimentSettings, read_experiment, recorded_settings

REPORT_DIR, REPORT_FILE = "report", "report.html"
TOP_TRIALS = 10
METRIC_ROWS = [
    ("mse", "MSE", False),
    ("rmse", "RMSE", False),
    ("mae", "MAE", False),
    ("f1", "F1 (half stars, weighted)", True),
    ("precision", "precision (half stars)", True),
    ("recall", "recall (half stars)", True),
    (f"precision@{RANK_K}", f"precision@{RANK_K} (ratings >= 4)", True),
    (f"recall@{RANK_K}", f"recall@{RANK_K}", True),
    (f"ndcg@{RANK_K}", f"NDCG@{RANK_K}", True),
]


# ---------------------------------------------------------------- the tutorial against the best config
@dataclass(frozen=True)
class Comparison:
    """The exported best model's held-out metrics beside the tutorial's configuration's (same split)."""

    tutorial_config: dict[str, Any]
    best_config: dict[str, Any]
    best_epoch: int
    tutorial_metrics: dict[str, float]
    best_metrics: dict[str, float]
    source: str
    headline: str
    """The exported model's test error, the figure to judge the run by (tune.export.summary.headline)."""


def compare_with_tutorial(folder: Path, records: list[TrialRecord]) -> Comparison:
    """From the export; MFError (shown on the page instead) when there is none, or an older one."""
    exported = folder / BEST_DIR / METRICS_FILE
    if not exported.is_file():
        raise MFError(
            f"no export yet: `python -m tune.export {folder}` writes {BEST_DIR}/ and this comparison"
        )
    metrics = json.loads(exported.read_text())
    if "tutorial" not in metrics:
        raise MFError(f"{exported} is from an earlier version: run `python -m tune.export {folder}` again")
    note = ""
    if best_trial(records).trial_id != metrics["trial_id"]:
        note = " (a better trial has ended since: export again to compare that one)"
    tutorial = metrics["tutorial"]
    figures = {k: v for k, v in metrics.items() if isinstance(v, float)}
    if not any(k.startswith(("val_", "test_")) for k in figures):
        # A refit with no test part has no held-out figure: show the chosen model's, on val, beside
        # the tutorial's (which then trained on train too).
        figures = {k: v for k, v in metrics.get("train_only", {}).items() if isinstance(v, float)}
    return Comparison(
        tutorial_config=tutorial["config"],
        best_config={**tutorial["config"], **metrics.get("params", {})},
        best_epoch=int(metrics["epoch"]),
        tutorial_metrics={k: v for k, v in tutorial.items() if isinstance(v, float)},
        best_metrics=figures,
        source=f"the export {BEST_DIR}/: trial {metrics['trial_id']}'s configuration trained on "
        f"{'+'.join(metrics.get('trained_on', ['train']))} for {metrics['epoch']} epochs{note}",
        headline=headline(metrics),
    )


# ---------------------------------------------------------------- HTML
def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return "" if value is None else str(value)


def _table(table_id: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def top_trials_table(records: list[TrialRecord], params: Sequence[str], *, top: int = TOP_TRIALS) -> str:
    scored = sorted((r for r in records if math.isfinite(r.best_val_mse)), key=lambda r: r.best_val_mse)
    header = ["rank", "trial", "optuna #", "outcome", "epochs", "best val MSE", "best epoch", "last val MSE"]
    # A tuned parameter named like a column (`epochs`: the trial's own length) is marked as tuned.
    header += [f"{p} (tuned)" if p in header else p for p in params]
    rows = [
        [
            str(i + 1),
            r.trial_id,
            _fmt(r.optuna_number),
            r.outcome,
            str(r.epochs),
            f"{r.best_val_mse:.4f}",
            str(r.best_epoch),
            f"{r.last_val_mse:.4f}",
            *(html.escape(_fmt(r.params.get(p))) for p in params),
        ]
        for i, r in enumerate(scored[:top])
    ]
    return _table("top-trials", header, rows)


def epochs_table(records: list[TrialRecord], max_epochs: int) -> str:
    groups = [
        (COMPLETE, [r for r in records if r.outcome == COMPLETE]),
        (PRUNED, [r for r in records if r.outcome == PRUNED]),
        (FAIL, [r for r in records if r.outcome == FAIL]),
        ("unfinished", [r for r in records if r.outcome not in (COMPLETE, PRUNED, FAIL)]),
    ]
    rows = []
    for name, group in [*[(n, g) for n, g in groups if g], ("total", records)]:
        spent, full = sum(r.epochs for r in group), len(group) * max_epochs
        share = f"{spent / full:.0%}" if full else ""
        rows.append([name, str(len(group)), str(spent), str(full), str(full - spent), share])
    header = [
        "trials",
        "count",
        "epochs spent (ASHA)",
        f"epochs had each run to {max_epochs}",
        "epochs saved",
        "share spent",
    ]
    return _table("epochs", header, rows)


def comparison_table(c: Comparison, tuned: Sequence[str]) -> str:
    rows = []
    for part in ("val", "test"):
        for key, label, higher in METRIC_ROWS:
            name = f"{part}_{key}"
            if name not in c.best_metrics:
                continue
            t, b = c.tutorial_metrics.get(name), c.best_metrics[name]
            better = t is not None and ((b > t) if higher else (b < t))
            cells = ["-" if t is None else f"{t:.4f}", f"<b>{b:.4f}</b>" if better else f"{b:.4f}"]
            rows.append([f"{part} {label}", *cells])
    rows.append(["epochs", str(c.tutorial_config["epochs"]), str(c.best_epoch)])
    # A tuned parameter named like a row (`epochs`: the trial's own length) is marked as tuned.
    named = {row[0] for row in rows}
    for key in tuned:
        rows.append(
            [
                f"{key} (tuned)" if key in named else key,
                html.escape(_fmt(c.tutorial_config.get(key))),
                html.escape(_fmt(c.best_config.get(key))),
            ]
        )
    return _table("tutorial-vs-best", ["", "tutorial's config", "best config"], rows)


def fidelity_html(f: PruningFidelity, settings: ExperimentSettings) -> str:
    if f.finished < 3 or not f.rungs:
        return f'<p class="note">{html.escape(" ".join(f.lines()))}</p>'
    rows = [[str(r.epoch), str(r.trials), f"{r.spearman:.2f}"] for r in f.rungs]
    table = _table(
        "pruning-fidelity", ["rung (epoch)", "trials that ran to their end", "Spearman's rho"], rows
    )
    warning = f.warning(settings)
    note = (
        f'<p class="note">Rank correlation between each trial\'s val MSE at the rung and its final best, over '
        f"the trials that ran to max_epochs. Of the final top {f.top}, the first rung (epoch {f.first_rung}) "
        f"would have stopped {f.top_stopped_at_first_rung} (outside the best 1/{settings.reduction_factor} "
        "of all values recorded there).</p>"
    )
    return table + note + (f'<p class="missing">{html.escape(warning)}</p>' if warning else "")


def confirmation_html(confirmed: list[Confirmed]) -> str:
    if not confirmed:
        return '<p class="note">No confirmation (--confirm-top 0, or the run has not reached it).</p>'
    rows = [
        [
            c.trial_id,
            f"<b>{c.mean:.4f}</b>" if i == 0 else f"{c.mean:.4f}",
            f"{c.sd:.4f}",
            str(c.epoch),
            str(len(c.seeds)),
            f"{c.search_best:.4f}",
        ]
        for i, c in enumerate(confirmed)
    ]
    header = ["trial", "mean val MSE", "sd", "epoch", "seeds", "search's best val MSE"]
    note = (
        '<p class="note">The best configurations of the search, each trained again with fresh seeds; the '
        "lowest mean (bold) was exported, with that number of epochs. The search's own best is a minimum over "
        "many noisy values, and so lower than what the configuration gives on average.</p>"
    )
    return note + _table("confirmation", header, rows)


CSS = """body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0 1.4em;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th{background:#f3f3f3}td:first-child{text-align:left}img{max-width:100%}
figure{margin:1.5em 0}figcaption,.note{color:#555;font-size:.92em}.missing{background:#fff6e5;padding:.6em}"""


def _figure_html(f: ReportFigure) -> str:
    head = f"<h3>{html.escape(f.title)}</h3>"
    if f.png is None:
        note = f'<p class="note">Not available for this experiment: {html.escape(f.note)}</p>'
        return f'<figure id="fig-{f.key}" class="missing">{head}{note}</figure>'
    data = base64.b64encode(f.png).decode()
    img = f'<img id="img-{f.key}" alt="{html.escape(f.title)}" src="data:image/png;base64,{data}">'
    return f'<figure id="fig-{f.key}">{head}{img}<figcaption>{html.escape(f.caption)}</figcaption></figure>'


def render(
    folder: Path,
    experiment: dict[str, Any],
    records: list[TrialRecord],
    figures: list[ReportFigure],
    comparison: Comparison | str,
) -> str:
    settings, base = recorded_settings(experiment), experiment["base_config"]
    max_epochs, tuned = settings.max_epochs, list(experiment.get("space", {}).get("params", {}))
    counts = {k: sum(r.outcome == k for r in records) for k in (COMPLETE, PRUNED, FAIL)}
    unfinished = len(records) - sum(counts.values())
    state = (
        f"{unfinished} trials still running or pending (the run is going on, or was interrupted)"
        if unfinished
        else "every trial has ended"
    )
    split = f"split {base.get('split')} (val_n {base.get('val_n')}, test_n {base.get('test_n')})"
    figs = {f.key: _figure_html(f) for f in figures}
    fidelity = fidelity_html(pruning_fidelity(records, settings), settings)
    confirmation = confirmation_html(read_summary(folder))
    lead = ""
    if isinstance(comparison, Comparison):
        lead = f'<p id="headline"><b>{html.escape(comparison.headline)}</b></p>'
        compare = (
            f'<p class="note">{html.escape(comparison.source)}. The search selected on the validation '
            "part, so val figures flatter what they were chosen by; a test part (--test-n) was never seen "
            "by the search, and both configurations are judged on it trained on the same parts. Ranking "
            f"metrics: top {RANK_K} of the items a user did not rate in the parts the model trained on, "
            "relevant = held-out ratings >= 4.</p>" + comparison_table(comparison, tuned)
        )
    else:
        compare = f'<p class="note">Not available: {html.escape(comparison)}</p>'
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>mf-tune report: {html.escape(settings.name)}</title>
<style>{CSS}</style></head><body>
<h1>Tuning report: {html.escape(settings.name)}</h1>
<p>{html.escape(str(folder))}; written {time.strftime("%Y-%m-%d %H:%M:%S")}. {len(records)} trials:
{counts[COMPLETE]} ran to max_epochs, {counts[PRUNED]} stopped by ASHA, {counts[FAIL]} failed; {state}.</p>
{lead}
<p class="note">data {html.escape(str(base.get("data")))}, {html.escape(split)}; space {html.escape(settings.space)}
({html.escape(", ".join(tuned))}); ASHA on val_mse: max_epochs {max_epochs}, grace period {settings.grace_period},
reduction factor {settings.reduction_factor}; trial seeds {settings.trial_seed}; num_samples
{settings.num_samples}, time budget {settings.time_budget_s or "none"}.</p>
<h2>The tutorial's configuration against the best one</h2>{compare}
<h2>Trials</h2>{figs["val-mse-per-epoch"]}{figs["best-so-far"]}
<h3>Top trials</h3>{top_trials_table(records, tuned)}
<h2>Hyperparameters</h2>{figs["param-importance"]}{figs["val-mse-vs-params"]}
<h2>Does pruning keep the good trials?</h2>{fidelity}
<h2>Confirmation</h2>{confirmation}
<h2>What ASHA saved</h2>{figs["asha-rungs"]}<h3>Epochs spent</h3>{epochs_table(records, max_epochs)}
</body></html>
"""


def write_report(folder: str | os.PathLike) -> Path:
    """Write <folder>/report/report.html and the figures' PNGs; return the HTML's path."""
    folder = Path(folder).resolve()
    experiment = read_experiment(folder)
    study = load_experiment_study(folder, experiment["settings"])
    records = collect_trials(folder, max_epochs=int(experiment["settings"]["max_epochs"]), study=study)
    out = folder / REPORT_DIR
    figures = build_figures(records, study, experiment)
    for f in figures:
        png = out / f"{f.key}.png"
        if f.png is None:
            png.unlink(missing_ok=True)  # a stale picture would contradict the page
        else:
            atomic_write(png, lambda file, data=f.png: file.write(data))
    try:
        comparison: Comparison | str = compare_with_tutorial(folder, records)
    except MFError as e:
        comparison = str(e)
    return atomic_write_text(out / REPORT_FILE, render(folder, experiment, records, figures, comparison))


@user_errors_exit
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tune.report",
        description="Write <experiment>/report/report.html (figures embedded) and the figures as PNGs.",
    )
    parser.add_argument("experiment", type=Path, help="experiment folder (e.g. runs/mf-tune)")
    args = parser.parse_args(argv)
    # Tune warns about every trial without results yet, which is normal while an experiment runs.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    path = write_report(args.experiment)
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
