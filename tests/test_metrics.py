"""Rating metrics: MSE / RMSE / MAE and the tutorial's half-star F1 / precision / recall."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import precision_score

from mf.metrics import (
    VAL_MAE,
    VAL_MSE,
    VAL_RMSE,
    all_metrics,
    classification_metrics,
    half_star_classes,
    prefixed,
    regression_metrics,
)


def test_regression_metrics_on_hand_computed_values() -> None:
    ratings = np.array([1.0, 2.0, 3.0, 4.0])
    predictions = np.array([1.5, 2.0, 2.0, 4.0])  # errors 0.5, 0, -1, 0
    m = regression_metrics(ratings, predictions)
    # MSE = (0.25 + 1) / 4, RMSE its root, MAE = (0.5 + 1) / 4.
    assert m == pytest.approx({"mse": 0.3125, "rmse": math.sqrt(0.3125), "mae": 0.375})


def test_regression_metrics_are_zero_for_perfect_predictions() -> None:
    r = np.array([0.5, 3.5, 5.0], dtype=np.float32)
    assert regression_metrics(r, r) == {"mse": 0.0, "rmse": 0.0, "mae": 0.0}


def test_regression_metrics_accept_float32_and_lists() -> None:
    # float32 predictions (the model's) are widened, so the result is a plain float.
    m = regression_metrics([3.0, 4.0], np.array([3.5, 3.5], dtype=np.float32))
    assert m["mse"] == 0.25 and type(m["mse"]) is float


@pytest.mark.parametrize(
    ("value", "klass"),
    [
        (3.74, 7),  # 7.48 -> 7, i.e. 3.5 stars
        (3.76, 8),  # 7.52 -> 8, i.e. 4 stars
        (0.5, 1),
        (0.1, 1),  # below the lowest half star: clipped up to class 1
        (-2.0, 1),
        (5.0, 10),
        (5.4, 10),  # above 5 stars (sigmoid_high 5.5 allows it): clipped down to class 10
        (2.5, 5),
    ],
)
def test_half_star_classes_maps_to_nearest_half_star(value: float, klass: int) -> None:
    assert half_star_classes(np.array([value])).tolist() == [klass]


def test_half_star_classes_gives_int64_for_every_true_rating() -> None:
    ratings = np.arange(1, 11) / 2  # 0.5, 1.0, ..., 5.0
    classes = half_star_classes(ratings)
    # Every true MovieLens rating has its own class, 1..10.
    assert classes.tolist() == list(range(1, 11))
    assert classes.dtype == np.int64


def test_classification_metrics_use_ratings_as_y_true() -> None:
    ratings = np.array([4.0, 4.0, 4.0, 4.0, 3.0, 3.0])  # classes 8, 8, 8, 8, 6, 6
    predictions = np.array([4.1, 3.9, 4.2, 3.2, 2.9, 3.1])  # classes 8, 8, 8, 6, 6, 6
    y_true, y_pred = half_star_classes(ratings), half_star_classes(predictions)
    kwargs = {"average": "weighted", "zero_division": 0}
    right = precision_score(y_true, y_pred, **kwargs)
    swapped = precision_score(y_pred, y_true, **kwargs)
    # The case tells the two orders apart: 8/9 with ratings as y_true, 7/8 the tutorial's way round.
    assert right == pytest.approx(8 / 9)
    assert swapped == pytest.approx(7 / 8)
    m = classification_metrics(ratings, predictions)
    # Ours is sklearn's with the true ratings as y_true (weights = true class frequencies).
    assert m["precision"] == pytest.approx(right)
    # Weighted recall is accuracy (5 of 6); F1 by hand: (4 * 6/7 + 2 * 4/5) / 6.
    assert m["recall"] == pytest.approx(5 / 6)
    assert m["f1"] == pytest.approx((4 * 6 / 7 + 2 * 4 / 5) / 6)


def test_classification_metrics_class_never_predicted_counts_as_zero_without_warning() -> None:
    ratings = np.array([5.0, 0.5])
    predictions = np.array([5.0, 5.0])  # class 1 (0.5 stars) is never predicted
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # zero_division=0: no UndefinedMetricWarning
        m = classification_metrics(ratings, predictions)
    # Class 10 precision 1/2 (weight 1/2), class 1 precision 0/0 -> 0.
    assert m["precision"] == pytest.approx(0.25)
    assert m["recall"] == pytest.approx(0.5)


def test_classification_metrics_are_one_for_perfect_predictions() -> None:
    r = np.array([0.5, 1.5, 3.0, 4.5, 5.0])
    assert classification_metrics(r, r) == {"f1": 1.0, "precision": 1.0, "recall": 1.0}


def test_all_metrics_has_regression_and_classification_keys() -> None:
    m = all_metrics(np.array([3.0, 4.0]), np.array([3.0, 3.0]))
    assert list(m) == ["mse", "rmse", "mae", "f1", "precision", "recall"]
    assert all(type(v) is float for v in m.values())


def test_prefixed_gives_the_val_metric_names() -> None:
    m = prefixed(regression_metrics(np.array([3.0]), np.array([3.5])), "val")
    # Prefixing the regression metrics with "val" gives exactly the constants.
    assert set(m) == {VAL_MSE, VAL_RMSE, VAL_MAE}
    assert m[VAL_MSE] == 0.25
    assert prefixed({"f1": 0.5}, "test") == {"test_f1": 0.5}
