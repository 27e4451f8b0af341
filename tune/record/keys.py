"""The names tune/ writes into results, trial folders and the Optuna study: each one defined here.

No torch and no Ray here: the export, the report and trials.csv read these names back from the files
alone. The trainer's own metric names (`epoch`, `val_mse`, ...) are mf.metrics'.
"""

from __future__ import annotations

from mf.metrics import EPOCH, EPOCH_SECONDS, TRAIN_LOSS, VAL_MAE, VAL_MSE, VAL_NDCG, VAL_RMSE

METRIC, MODE = VAL_MSE, "min"
"""What every trial is judged on: ASHA, the Optuna study, the export and the report."""
RANKING_METRIC = VAL_NDCG
"""The second objective (higher is better), where trials measure it (--val-ndcg-k): the study keeps each trial's best
(BEST_VAL_NDCG) and the export adds best-ranking/; TPE and ASHA go on judging by METRIC alone."""

# ---------------------------------------------------------------- keys of a trial's results
NODE_ID = "node_id"
DEVICE = "device"
GPU_IDS = "gpu_ids"
WALL_TIME = "wall_time"
DIVERGED = "diverged"
"""1 on the report that ends a trial whose loss turned NaN or infinite (0 on every other)."""
ERROR = "error"
"""The diverged trial's message."""
RAN_AHEAD = "ran_ahead"
"""1 if the epoch was trained while the driver handled the previous epoch's report."""
ALREADY_LOGGED = "already_logged"
"""Set by a trial that sends its last result again after a driver restart: not logged twice."""
DONE = "done"
"""Set by Tune on a trial's last result (ASHA stopped it, or it reached max_epochs)."""

OWN_RESULT_KEYS = frozenset(
    (
        EPOCH,
        TRAIN_LOSS,
        VAL_MSE,
        VAL_RMSE,
        VAL_MAE,
        VAL_NDCG,
        NODE_ID,
        DEVICE,
        GPU_IDS,
        DIVERGED,
        ERROR,
        RAN_AHEAD,
    )
)
"""What the trainable puts in a result besides its timing (Tune adds keys of its own)."""

# ---------------------------------------------------------------- user attributes of Optuna trials
RAY_TRIAL_ID = "ray_trial_id"
"""The Tune trial that ran the Optuna trial: joins the study with the trial folders."""
WARM_START_FROM = "warm_start_from"
"""Set on a trial copied from an earlier study by --warm-start: not a trial of this experiment."""
BEST_VAL_NDCG = "best_val_ndcg"
"""The trial's highest RANKING_METRIC of any epoch so far (only where trials measure it)."""

__all__ = [
    "ALREADY_LOGGED",
    "BEST_VAL_NDCG",
    "DEVICE",
    "DIVERGED",
    "DONE",
    "EPOCH",
    "EPOCH_SECONDS",
    "ERROR",
    "GPU_IDS",
    "METRIC",
    "MODE",
    "NODE_ID",
    "OWN_RESULT_KEYS",
    "RAN_AHEAD",
    "RANKING_METRIC",
    "RAY_TRIAL_ID",
    "TRAIN_LOSS",
    "VAL_MAE",
    "VAL_MSE",
    "VAL_NDCG",
    "VAL_RMSE",
    "WALL_TIME",
    "WARM_START_FROM",
]
