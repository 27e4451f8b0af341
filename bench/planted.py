"""A MovieLens-layout data set with a planted truth: a biased low-rank model plus noise.

Why: on real ratings nobody knows how good a model could be. Here every rating is
`round_half(clip(mu + b_u + b_i + p_u . q_i + noise))` for known biases and rank-`rank` factors, so
the MSE of the truth itself on the held-out part (the oracle MSE) says how far a tuned model is from
the best any model could do. The shape follows ml-latest-small: about 610 users and 9,000 items,
skewed activity (at least 20 ratings a user) and popularity, one rating per (user, item), timestamps
rising per user so that the last-n split holds out each user's latest ratings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mf.data import Dataset
from mf.metrics import regression_metrics


@dataclass(frozen=True)
class PlantedTruth:
    mu: float
    user_bias: np.ndarray  # (U,) by raw user id - 1
    item_bias: np.ndarray  # (I,) by raw item id - 1
    p: np.ndarray  # (U, rank)
    q: np.ndarray  # (I, rank)

    def mean_rating(self, raw_users: np.ndarray, raw_items: np.ndarray) -> np.ndarray:
        u, i = np.asarray(raw_users) - 1, np.asarray(raw_items) - 1
        x = self.mu + self.user_bias[u] + self.item_bias[i] + np.einsum("ij,ij->i", self.p[u], self.q[i])
        return np.clip(x, 0.5, 5.0)

    def oracle_mse(self, dataset: Dataset, part: str = "val") -> float:
        """The MSE of the truth's (clipped) mean rating on a held-out part of a split of this data."""
        held = {"val": dataset.val, "test": dataset.test}[part]
        truth = self.mean_rating(dataset.user_ids[held.users], dataset.item_ids[held.items])
        return regression_metrics(held.ratings, truth)["mse"]


def write_planted(
    folder: Path,
    *,
    n_users: int = 610,
    n_items: int = 9000,
    n_ratings: int = 100_000,
    rank: int = 8,
    noise: float = 0.8,
    seed: int = 0,
) -> PlantedTruth:
    """Write `folder/ratings.csv` (userId,movieId,rating,timestamp) and `folder/truth.npz`."""
    rng = np.random.default_rng(seed)
    activity = rng.pareto(1.2, n_users) + 1.0
    target = float(n_ratings)
    for _ in range(20):  # the floor of 20 and the cap at half the catalogue move the total: aim again
        per_user = np.clip(np.round(activity / activity.sum() * target), 20, n_items // 2).astype(int)
        target *= n_ratings / per_user.sum()
    popularity = (rng.permutation(n_items) + 1.0) ** -0.9
    popularity /= popularity.sum()
    truth = PlantedTruth(
        mu=3.5,
        user_bias=rng.normal(0.0, 0.35, n_users),
        item_bias=rng.normal(0.0, 0.45, n_items),
        p=rng.normal(0.0, 0.45, (n_users, rank)),
        q=rng.normal(0.0, 0.45, (n_items, rank)),
    )
    users, items, stamps = [], [], []
    for u, count in enumerate(per_user):
        chosen = rng.choice(n_items, size=count, replace=False, p=popularity)
        users.append(np.full(count, u + 1))
        items.append(chosen + 1)
        stamps.append(1_500_000_000 + np.sort(rng.integers(0, 10**8, count)))
    users, items, stamps = np.concatenate(users), np.concatenate(items), np.concatenate(stamps)
    mean = truth.mean_rating(users, items)
    ratings = np.clip(np.round((mean + rng.normal(0.0, noise, len(mean))) * 2) / 2, 0.5, 5.0)
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({"userId": users, "movieId": items, "rating": ratings, "timestamp": stamps})
    frame.to_csv(folder / "ratings.csv", index=False)
    np.savez(
        folder / "truth.npz",
        mu=truth.mu,
        user_bias=truth.user_bias,
        item_bias=truth.item_bias,
        p=truth.p,
        q=truth.q,
    )
    return truth


def read_truth(folder: Path) -> PlantedTruth:
    z = np.load(folder / "truth.npz")
    return PlantedTruth(float(z["mu"]), z["user_bias"], z["item_bias"], z["p"], z["q"])
