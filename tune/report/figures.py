"""The report's figures, drawn from trial records with matplotlib's object API (Agg, no pyplot).

`build_figures` lists them, each with its caption. No pyplot: a figure is a plain object, nothing
global is left open between reports, and no display is needed on a cluster head node. Importance
comes from `optuna.importance` (fANOVA, seeded), drawn here rather than with
`optuna.visualization.matplotlib`, which is experimental and draws through pyplot. Each builder
returns a `Figure` or raises `NotAvailable` with the reason, which the page shows instead of the
picture (an experiment that has just started, too few finished trials for an importance estimate).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FormatStrFormatter, LogLocator, MaxNLocator, NullFormatter

from mf.errors import MFError
from mf.metrics import EPOCH, VAL_MSE
from tune.record.keys import RAY_TRIAL_ID
from tune.record.outcome import COMPLETE, FAIL, PRUNED
from tune.record.results import TrialRecord
from tune.settings import ExperimentSettings, recorded_settings

COLOURS = {COMPLETE: "#1f77b4", PRUNED: "#ff7f0e", FAIL: "#d62728"}
UNFINISHED = "#7f7f7f"  # RUNNING / PENDING / PAUSED
LABELS = {COMPLETE: "ran to max_epochs", PRUNED: "stopped by ASHA", FAIL: "failed"}
BEST = "#2ca02c"


class NotAvailable(MFError):
    """A figure that cannot be drawn for this experiment (yet); the message says why."""


def colour(outcome: str) -> str:
    return COLOURS.get(outcome, UNFINISHED)


def png_bytes(fig: Figure) -> bytes:
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=100, bbox_inches="tight")
    return out.getvalue()


def asha_rungs(settings: ExperimentSettings) -> list[int]:
    """ASHA's rungs (of every bracket) and max_epochs, where a trial that is never stopped ends."""
    return [*settings.rung_epochs, settings.max_epochs]


def _finite_history(record: TrialRecord) -> pd.DataFrame | None:
    h = record.history
    if h is None or VAL_MSE not in h or EPOCH not in h:
        return None
    h = h[np.isfinite(h[VAL_MSE].astype(float))]
    return h if len(h) else None


def _outcome_handles(records: Sequence[TrialRecord]) -> list[Line2D]:
    """Legend entries for the outcomes present, with their counts."""
    handles = []
    for outcome in (COMPLETE, PRUNED, FAIL):
        n = sum(r.outcome == outcome for r in records)
        if n:
            marker = "x" if outcome == PRUNED else "o"
            handles.append(
                Line2D([], [], color=colour(outcome), marker=marker, label=f"{LABELS[outcome]} ({n})")
            )
    n = sum(r.outcome not in COLOURS for r in records)
    if n:
        handles.append(Line2D([], [], color=UNFINISHED, marker="o", label=f"still running / pending ({n})"))
    return handles


def curves_figure(records: Sequence[TrialRecord], *, rungs: Sequence[int], best_id: str | None) -> Figure:
    """Validation MSE per epoch of every trial; an x where ASHA stopped a trial."""
    drawn = [(r, h) for r in records if (h := _finite_history(r)) is not None]
    if not drawn:
        raise NotAvailable("no trial has reported a finite val MSE yet")
    fig = Figure(figsize=(9, 5.2))
    ax = fig.add_subplot()
    for r, h in drawn:
        c, best = colour(r.outcome), r.trial_id == best_id
        ax.plot(
            h[EPOCH],
            h[VAL_MSE],
            color=c,
            lw=2.4 if best else 1.1,
            alpha=1 if best else 0.75,
            zorder=3 if best else 2,
        )
        last = h.iloc[-1]
        if r.outcome == PRUNED:
            ax.plot(last[EPOCH], last[VAL_MSE], "x", color=c, ms=9, mew=2, zorder=4)
        elif r.outcome == FAIL:
            ax.plot(last[EPOCH], last[VAL_MSE], "o", color=c, ms=6, zorder=4)
    extra = []
    best = next((r for r, _ in drawn if r.trial_id == best_id), None)
    if best is not None:
        ax.plot(best.best_epoch, best.best_val_mse, "*", color=BEST, ms=16, mec="black", zorder=5)
        extra.append(
            Line2D(
                [],
                [],
                color=BEST,
                marker="*",
                ms=12,
                mec="black",
                ls="",
                label=f"best: {best.trial_id}, {best.best_val_mse:.4f} @ epoch {best.best_epoch}",
            )
        )
    for rung in rungs:
        ax.axvline(rung, color="grey", ls=":", lw=1, zorder=1)
    extra.append(Line2D([], [], color="grey", ls=":", label="ASHA rungs"))
    ax.set_yscale("log")
    _plain_log_ticks(ax)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation MSE (log scale)")
    ax.set_title(f"Validation MSE per epoch, {len(drawn)} trials (x: where ASHA stopped a trial)")
    ax.grid(alpha=0.3, which="both")
    handles = [*_outcome_handles([r for r, _ in drawn]), *extra]
    ax.legend(handles=handles, loc="upper right", fontsize=9, framealpha=0.9)
    return fig


def _plain_log_ticks(ax: Any, axis: str = "y") -> None:
    """Label a log axis 0.9, 1, 1.2 ... when it spans little (matplotlib would label only 10^0)."""
    low, high = ax.get_ylim() if axis == "y" else ax.get_xlim()
    narrow = high / max(low, 1e-12) < 4
    subs = (1.0, 1.2, 1.5, 2.0, 3.0, 5.0, 7.0, 8.0, 9.0) if narrow else (1.0, 2.0, 5.0)
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_locator(LogLocator(base=10, subs=subs))
    target.set_minor_locator(LogLocator(base=10, subs=np.arange(1, 10) / 1.0))
    target.set_major_formatter(FormatStrFormatter("%.3g"))
    target.set_minor_formatter(NullFormatter())


def epoch_events(records: Sequence[TrialRecord], starts: dict[str, float]) -> pd.DataFrame:
    """Every reported epoch with its end time in seconds since the experiment began, in time order.

    Tune's `timestamp` is whole seconds; `time_total_s` is precise within a trial. A trial's start is
    the midpoint of the interval its rows allow (and no earlier than Optuna's start, in `starts`).
    """
    rows, trial_starts = [], []
    for r in records:
        h = _finite_history(r)
        if h is None or r.outcome == FAIL:
            continue
        total = h["time_total_s"].astype(float) if "time_total_s" in h else pd.Series(0.0, index=h.index)
        stamp = h["timestamp"].astype(float) if "timestamp" in h else total
        low, high = float((stamp - total).max()), float((stamp + 1 - total).min())
        if r.trial_id in starts:
            low = min(max(low, starts[r.trial_id]), high)
        start = (low + high) / 2 if high >= low else low
        trial_starts.append(start)
        for epoch, mse, t in zip(h[EPOCH], h[VAL_MSE], total, strict=True):
            rows.append({"trial_id": r.trial_id, EPOCH: int(epoch), VAL_MSE: float(mse), "end": start + t})
    events = pd.DataFrame(rows, columns=["trial_id", EPOCH, VAL_MSE, "end"])
    if len(events):
        events["end"] -= min(trial_starts)
        events = events.sort_values("end", kind="stable").reset_index(drop=True)
    return events


def best_so_far_figure(events: pd.DataFrame, *, max_epochs: int, n_trials: int) -> Figure:
    """The lowest val MSE seen so far against wall-clock time and against epochs spent."""
    if not len(events):
        raise NotAvailable("no trial has reported a finite val MSE yet")
    best = events[VAL_MSE].cummin()
    spent = np.arange(1, len(events) + 1)
    fig = Figure(figsize=(11, 4.6))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, x, label in (
        (axes[0], events["end"], "wall-clock seconds since the experiment started"),
        (axes[1], spent, "epochs spent, all trials together"),
    ):
        ax.scatter(x, events[VAL_MSE], s=12, color="grey", alpha=0.45, label="one epoch of one trial")
        ax.step(x, best, where="post", color="black", lw=2, label="best val MSE so far")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_yscale("log")
    _plain_log_ticks(axes[0])
    axes[0].set_ylabel("validation MSE (log scale)")
    axes[0].set_title(f"against time ({events['end'].max():.0f} s)")
    axes[1].set_title(f"against epochs ({len(events)} by ASHA; {n_trials * max_epochs} without it)")
    axes[1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].legend(loc="upper right", fontsize=9)
    final = float(best.iloc[-1])
    axes[1].annotate(
        f"{final:.4f}", (spent[-1], final), textcoords="offset points", xytext=(-4, 6), ha="right"
    )
    fig.suptitle("Best validation MSE so far")
    return fig


def param_importances(study: optuna.Study | None) -> tuple[dict[str, float], int]:
    """fANOVA importance of each parameter for val MSE over the COMPLETE trials (and their count)."""
    if study is None:
        raise NotAvailable("no Optuna study found in the experiment (optuna.journal or --study-storage)")
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2:
        raise NotAvailable(
            f"parameter importance needs at least 2 COMPLETE trials (ran to max_epochs); this study has "
            f"{len(complete)}: run more trials or a longer budget"
        )
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        return optuna.importance.get_param_importances(study, evaluator=evaluator), len(complete)
    except (RuntimeError, ValueError) as e:  # e.g. every complete trial has the same parameters
        raise NotAvailable(f"Optuna could not estimate importances: {e}") from e


def importance_figure(importances: dict[str, float], n_complete: int) -> Figure:
    names = list(importances)[::-1]  # most important on top
    values = [importances[n] for n in names]
    fig = Figure(figsize=(7.5, 0.5 * len(names) + 1.6))
    ax = fig.add_subplot()
    bars = ax.barh(names, values, color="#1f77b4")
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], padding=3, fontsize=9)
    ax.set_xlim(0, max(values) * 1.18 if values and max(values) > 0 else 1)
    ax.set_xlabel("importance for val MSE (fANOVA; the values sum to 1)")
    rough = " (few trials: a rough estimate)" if n_complete < 10 else ""
    ax.set_title(f"Parameter importance over {n_complete} COMPLETE trials{rough}")
    ax.grid(alpha=0.3, axis="x")
    return fig


def params_figure(
    records: Sequence[TrialRecord], space: dict[str, dict[str, Any]], *, best_id: str | None
) -> Figure:
    """Each trial's best val MSE against each tuned parameter; log x for log-scale parameters."""
    scored = [r for r in records if math.isfinite(r.best_val_mse)]
    if not scored or not space:
        raise NotAvailable(
            "no trial has reported a finite val MSE yet" if space else "the space tunes nothing"
        )
    names = list(space)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.5 * rows + 0.6))
    axes = np.atleast_1d(fig.subplots(rows, cols, sharey=True, squeeze=False)).ravel()
    jitter = np.random.default_rng(0)
    for ax, name in zip(axes, names, strict=False):
        spec = space[name]
        values = [r.params.get(name) for r in scored]
        if spec.get("type") == "categorical":
            choices = list(spec["choices"])
            x = [choices.index(v) + jitter.uniform(-0.12, 0.12) if v in choices else np.nan for v in values]
            ax.set_xticks(range(len(choices)), [str(c) for c in choices])
            ax.set_xlim(-0.5, len(choices) - 0.5)
        else:
            x = [np.nan if v is None else float(v) for v in values]
            if spec.get("log"):
                ax.set_xscale("log")
        for xi, r in zip(x, scored, strict=True):
            ax.scatter(
                xi, r.best_val_mse, s=30, color=colour(r.outcome), marker="x" if r.outcome == PRUNED else "o"
            )
            if r.trial_id == best_id:
                ax.scatter(xi, r.best_val_mse, s=220, marker="*", color=BEST, edgecolors="black", zorder=5)
        ax.set_xlabel(name + (" (log scale)" if spec.get("log") else ""))
        ax.grid(alpha=0.3)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    axes[0].set_yscale("log")
    _plain_log_ticks(axes[0])
    for ax in axes[::cols]:
        ax.set_ylabel("trial's best val MSE")
    best = Line2D([], [], color=BEST, marker="*", ms=12, mec="black", ls="", label="best trial")
    fig.suptitle("Best val MSE of each trial against each tuned parameter (stopped trials: fewer epochs)")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.legend(handles=[*_outcome_handles(scored), best], loc="lower center", ncol=5, fontsize=10)
    return fig


def rungs_figure(
    records: Sequence[TrialRecord], *, rungs: Sequence[int], reduction_factor: int, grace_period: int
) -> Figure:
    """How many trials reached each ASHA rung, against ASHA's aim of 1/rf of the trials per rung."""
    if not any(r.epochs for r in records):
        raise NotAvailable("no trial has finished an epoch yet")
    counts = [sum(r.epochs >= rung for r in records) for rung in rungs]
    aims = [len(records) / reduction_factor**k for k in range(len(rungs))]
    labels = [f"epoch {rung}" for rung in rungs]
    labels[-1] += "\n(max_epochs)"
    fig = Figure(figsize=(1.6 * len(rungs) + 3.5, 4.4))
    ax = fig.add_subplot()
    bars = ax.bar(labels, counts, color="#1f77b4", label="trials that reached the rung")
    ax.bar_label(bars, labels=[f"{c} ({c / len(records):.0%})" for c in counts], padding=3)
    ax.plot(labels, aims, "_", color="black", ms=40, mew=2)
    ax.set_ylim(0, len(records) * 1.18)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("trials")
    ax.set_xlabel("ASHA rung (epochs trained)")
    ax.set_title(
        f"Trials reaching each ASHA rung ({len(records)} trials, grace period {grace_period}, "
        f"reduction factor {reduction_factor})"
    )
    aim = Line2D([], [], color="black", lw=2, label=f"ASHA's aim: trials / {reduction_factor}^k")
    ax.legend(handles=[bars, aim], loc="upper right", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    return fig


@dataclass(frozen=True)
class ReportFigure:
    key: str
    """File stem of the PNG and the HTML id of the figure (fig-<key>, img-<key>)."""
    title: str
    caption: str
    png: bytes | None
    note: str = ""
    """Why the figure is missing, when png is None."""


def _figure(key: str, title: str, caption: str, draw: Callable[[], Any]) -> ReportFigure:
    try:
        return ReportFigure(key, title, caption, png_bytes(draw()))
    except NotAvailable as e:
        return ReportFigure(key, title, caption, None, str(e))


def build_figures(
    records: list[TrialRecord], study: optuna.Study | None, experiment: dict[str, Any]
) -> list[ReportFigure]:
    settings = recorded_settings(experiment)
    max_epochs, rf, grace = settings.max_epochs, settings.reduction_factor, settings.grace_period
    rungs = asha_rungs(settings)
    scored = [r for r in records if r.outcome != FAIL and math.isfinite(r.best_val_mse)]
    best_id = min(scored, key=lambda r: r.best_val_mse).trial_id if scored else None
    starts = {}
    if study is not None:
        starts = {
            t.user_attrs[RAY_TRIAL_ID]: t.datetime_start.timestamp()
            for t in study.get_trials(deepcopy=False)
            if RAY_TRIAL_ID in t.user_attrs and t.datetime_start is not None
        }
    space = experiment.get("space", {}).get("params", {})
    return [
        _figure(
            "val-mse-per-epoch",
            "Validation MSE per epoch",
            "Every trial's curve, coloured by how it ended. An x marks the epoch at which ASHA stopped "
            "a trial; dotted lines are ASHA's rungs; the star is the best epoch of the best trial.",
            lambda: curves_figure(records, rungs=rungs, best_id=best_id),
        ),
        _figure(
            "best-so-far",
            "Best val MSE so far",
            "The lowest val MSE reported by any trial so far, against wall-clock time (trials run in "
            "parallel) and against epochs spent by all trials together; grey dots are single epochs.",
            lambda: best_so_far_figure(
                epoch_events(records, starts), max_epochs=max_epochs, n_trials=len(records)
            ),
        ),
        _figure(
            "param-importance",
            "Parameter importance",
            "Optuna's fANOVA importance of each tuned parameter for val MSE, fitted on the trials that "
            "ran to max_epochs (stopped trials are left out: their values come from fewer epochs).",
            lambda: importance_figure(*param_importances(study)),
        ),
        _figure(
            "val-mse-vs-params",
            "Val MSE against each hyperparameter",
            "Each trial's best val MSE against each parameter of the search space (log axes for "
            "log-scale parameters). Trials ASHA stopped early (x) were judged on fewer epochs.",
            lambda: params_figure(records, space, best_id=best_id),
        ),
        _figure(
            "asha-rungs",
            "Trials per ASHA rung",
            f"How many trials trained to each rung (grace period {grace} x reduction factor {rf}^k, "
            f"up to max_epochs {max_epochs}); the black dash on each bar is ASHA's aim of keeping 1/{rf} of the trials per rung.",
            lambda: rungs_figure(records, rungs=rungs, reduction_factor=rf, grace_period=grace),
        ),
    ]
