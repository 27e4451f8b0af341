"""Rating metrics: MSE / RMSE / MAE, and the tutorial's half-star F1 / precision / recall.

Metric names are defined here once; the trainer, Tune, the export and the report use them.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score, precision_score, recall_score

EPOCH = "epoch"
TRAIN_LOSS = "train_loss"
VAL_MSE = "val_mse"
VAL_RMSE = "val_rmse"
VAL_MAE = "val_mae"
EPOCH_SECONDS = "epoch_seconds"  # the trainer's own time for the epoch (training + validation)
VAL_NDCG = "val_ndcg"  # NDCG@val_ndcg_k of the predicted rating on the val part (when val_ndcg_k > 0)


def regression_metrics(ratings: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """MSE, RMSE and MAE of predictions against true ratings."""
    err = np.asarray(predictions, dtype=np.float64) - np.asarray(ratings, dtype=np.float64)
    mse = float(np.mean(err * err))
    return {"mse": mse, "rmse": float(np.sqrt(mse)), "mae": float(np.mean(np.abs(err)))}


def half_star_classes(values: np.ndarray) -> np.ndarray:
    """Map ratings or predictions to the ten half-star classes 1..10 (x2, nearest 0.5)."""
    return np.clip(np.rint(np.asarray(values, dtype=np.float64) * 2), 1, 10).astype(np.int64)


def classification_metrics(ratings: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """The tutorial's weighted F1 / precision / recall over half-star classes.

    Unlike the tutorial's code, the true ratings are `y_true` (it passed predictions there),
    so the weights are the true class frequencies.
    """
    y_true = half_star_classes(ratings)
    y_pred = half_star_classes(predictions)
    kwargs = {"average": "weighted", "zero_division": 0}
    return {
        "f1": float(f1_score(y_true, y_pred, **kwargs)),
        "precision": float(precision_score(y_true, y_pred, **kwargs)),
        "recall": float(recall_score(y_true, y_pred, **kwargs)),
    }


def all_metrics(ratings: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """`regression_metrics` and `classification_metrics` of predictions against true ratings, in one
    dict: mse, rmse, mae, f1, precision, recall."""
    return {**regression_metrics(ratings, predictions), **classification_metrics(ratings, predictions)}


def prefixed(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    """{'mse': x} -> {'val_mse': x}."""
    return {f"{prefix}_{k}": v for k, v in metrics.items()}
