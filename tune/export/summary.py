"""What the export wrote, said to a person: the folder and file names, the headline (the test error
first) and the summaries tune.run and tune.export print. Files only."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from mf.ranking_choice import RANKING_FILE, RankingChoice
from tune.export.confirmation import fresh_seeds

BEST_DIR = "best"
BEST_RANKING_DIR = "best-ranking"
METRICS_FILE = "metrics.json"
RANK_K = 10


def ranking_summary(choice: RankingChoice) -> dict[str, Any]:
    """The served ranking (mf.ranking_choice) and its NDCG@k beside most-popular's, per part."""
    out: dict[str, Any] = {"served": str(choice.ranking), "file": RANKING_FILE}
    for part, figures in (("val", choice.val), ("test", choice.test)):
        for name in ("served", "popular", "predicted") if figures else ():
            out[f"{part}_{name}_ndcg@{choice.k}"] = figures[name]["ndcg"]
    return out


def headline(exported: dict[str, Any]) -> str:
    """One line, the figure a user should judge the run by: the exported model's test error (a part
    the search never saw), or a plain statement that no figure is unbiased without a test part."""
    if "test_mse" not in exported:
        return (
            "result: no test part, so no unbiased figure: the val figures below were all chosen on the "
            "part they are measured on (hold one out: --test-n 5, --test-fraction or --test-data)"
        )
    tutorial = exported.get("tutorial", {})
    beside = [f"the tutorial's configuration {tutorial['test_mse']:.4f}"] if "test_mse" in tutorial else []
    if "test_mse" in exported.get("train_only", {}):
        beside.insert(0, f"the chosen model before its refit {exported['train_only']['test_mse']:.4f}")
    trained = "+".join(exported.get("test_from", exported.get("trained_on", ["train"])))
    return (
        f"result: test_mse {exported['test_mse']:.4f} on {exported.get('test_ratings', 0):,} ratings the search "
        f"never saw (the exported configuration trained on {trained})"
        + (f"; {', '.join(beside)}" if beside else "")
    )


def format_export(metrics: dict[str, Any], where: Path) -> str:
    """The export in a few lines, the honest figure first: the exported model's test error (on a part
    the search never saw), then the confirmation's mean, then the search's best, which is a
    selection figure; and the tutorial's configuration trained the same way on the same split."""
    trained_on = "+".join(metrics.get("trained_on", ["train"]))
    runs = metrics.get("refit", {}).get("ensemble", 1)
    lines = [
        f"exported {where}: trial {metrics['trial_id']}'s configuration, trained on {trained_on} for "
        f"{metrics['epoch']} epochs"
        + (f", the average of {runs} runs with different seeds" if runs > 1 else "")
    ]
    train_only = metrics.get("train_only", {})
    if "test_mse" in metrics:
        tested = "+".join(metrics.get("test_from", metrics.get("trained_on", ["train"])))
        source = (
            f" (by the model trained on {tested}: none is held out from this one)"
            if "test_from" in metrics
            else ""
        )
        before = (
            f"; the chosen model, trained on train only: {train_only['test_mse']:.4f}"
            if "test_mse" in train_only
            else ""
        )
        unseen = metrics.get("test_unseen")
        left = f", {unseen:,} of unknown users or items left out" if unseen else ""
        lines.append(
            f"  test_mse {metrics['test_mse']:.4f} on {metrics.get('test_ratings', 0):,} held-out ratings{left}"
            f"{source}{before}"
        )
    else:
        lines.append(
            "  no test part: every figure below was chosen on the validation part, so none is an unbiased "
            "estimate of the error on new ratings (hold one out: --test-n, --test-fraction or --test-data)"
        )
    confirmation = metrics.get("confirmation")
    if confirmation:
        lines.append(
            f"  confirmed over {fresh_seeds(len(confirmation['seeds']))}: val_mse {confirmation['val_mse_mean']:.4f} "
            f"± {confirmation['val_mse_sd']:.4f} (trained on train)"
        )
    trials = metrics.get("trials")
    lines.append(
        f"  the search's best: val_mse {metrics['search_best_val_mse']:.4f}, a selection figure (the lowest "
        f"{'of ' + format(trials, ',') + ' trials ' if trials else ''}on the part they were chosen on)"
    )
    if "refit" in metrics and "skipped" in metrics["refit"]:
        lines.append(f"  refit: {metrics['refit']['skipped']}")
    tutorial = metrics["tutorial"]
    part = "test" if "test_mse" in metrics else "val"
    ref = tutorial.get("skipped") or f"{part}_mse {tutorial[f'{part}_mse']:.4f}"
    ref_on = tutorial.get("config", {}).get("train_on", "train")
    lines.append(f"  the tutorial's configuration on the same split, trained on {ref_on}: {ref}")
    ranking = metrics.get("ranking", {})
    if ranking:
        rpart = "test" if f"test_served_ndcg@{RANK_K}" in ranking else "val"
        lines.append(
            f"  ranked by {ranking['served']} ({ranking['file']}): {rpart} NDCG@{RANK_K} "
            f"{ranking[f'{rpart}_served_ndcg@{RANK_K}']:.4f}, most popular {ranking[f'{rpart}_popular_ndcg@{RANK_K}']:.4f}"
        )
    return "\n".join(lines)


def format_ranking_export(metrics: dict[str, Any], where: Path) -> str:
    """One line: the trial best by val NDCG, its ranking on the held-out parts and its rating error."""
    ranking = metrics["ranking"]
    part = "test" if f"test_served_ndcg@{RANK_K}" in ranking else "val"
    mse = metrics.get(f"{part}_mse", metrics.get("train_only", {}).get(f"{part}_mse", math.nan))
    return (
        f"exported {where}: trial {metrics['trial_id']}'s configuration by {metrics['objective']} "
        f"{metrics['search_best_val_ndcg']:.4f}, trained on {'+'.join(metrics.get('trained_on', ['train']))} "
        f"for {metrics['epoch']} epochs; ranked by {ranking['served']}: "
        f"{part} NDCG@{RANK_K} {ranking[f'{part}_served_ndcg@{RANK_K}']:.4f}, most popular "
        f"{ranking[f'{part}_popular_ndcg@{RANK_K}']:.4f}; {part}_mse {mse:.4f}"
    )
