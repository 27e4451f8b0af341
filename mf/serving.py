"""An exported model ready to answer requests: recommend, predict, health. Knows nothing of Ray or HTTP.

    rec = Recommender.from_export("runs/mf-tune/best")
    rec.recommend(1, k=10)                       # [Recommendation(rank=1, movie_id=..., ...), ...]
    rec.predict(parse_pairs([{"user": 1, "movie": 31}]))
    rec.health()

`python -m mf.recommend` and `python -m mf.serve` both answer through a `Recommender`, so the CLI and
the HTTP routes give the same movies in the same order. Everything a request needs is computed at
load (the numpy factors, each user's train items, titles by item, the ranking's per-item terms):
a request is one user's scores (a (D,) x (D, I) product), a top k and a few lookups, with no
autograd and no pandas.

What is never recommended (`exclude`): by default (`rated`) any movie the user has rated at all, in
any part of the data (train, val, test): what a served recommender must do. With `trained`, only
the movies the user rated in the parts the model trained on (train, or train + val for a refit
export): the candidates `mf.recommend --evaluate` judges, so that a user's held-out ratings can
appear among the recommendations as the hits the evaluation counts. Neither ever recommends a
movie the model learnt the user's rating of.

Bad input raises `RequestError`, an MFError with the HTTP status and the field it is about, so that
the CLI prints it as one line and the server answers it as a 4xx.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mf.config import TrainConfig, from_dict
from mf.data import Dataset
from mf.data.encode import lookup_many
from mf.errors import MFError
from mf.ranking import POPULAR, FactorScorer, Ranking, item_counts, ranking_scores, rows_by_user, top_k
from mf.ranking_choice import RankingChoice, ranking_for
from mf.training import check_matches, dataset_for, load_model

MODEL_FILE, METRICS_FILE = "model.pt", "metrics.json"
MAX_PAIRS = 10_000
"""Pairs one /predict request may hold: more is a bulk job, not a request."""
FALLBACKS = (POPULAR,)
EXCLUDES = ("rated", "trained")
"""What a recommendation leaves out: every movie the user rated (the default), or those the model
trained on (the candidates an evaluation judges)."""


class RequestError(MFError):
    """A request that cannot be answered: `status` is its HTTP status, `field` the input it is about."""

    def __init__(self, message: str, *, field: str, status: int = 422) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


@dataclass(frozen=True)
class Recommendation:
    """One recommended movie: its rank (1: the best), raw MovieLens id and title."""

    rank: int
    movie_id: int
    title: str
    predicted_rating: float | None
    """The model's predicted rating; None for a popularity fallback to an unknown user."""

    def as_dict(self) -> dict[str, Any]:
        """The JSON form that /recommend and `mf.recommend --json` give: rank, movieId, title and
        predicted_rating (rounded to 4 decimals, or None)."""
        return {
            "rank": self.rank,
            "movieId": self.movie_id,
            "title": self.title,
            "predicted_rating": None if self.predicted_rating is None else round(self.predicted_rating, 4),
        }


@dataclass(frozen=True)
class LoadedModel:
    """A trained model as numpy factors, with its config and the data it was checked against."""

    scorer: FactorScorer
    config: TrainConfig
    dataset: Dataset
    path: Path
    """The model.pt file."""


def load(model_path: str | os.PathLike, *, data: str | os.PathLike | None = None) -> LoadedModel:
    """Load an export folder (or a model.pt) and the data of its config (or `data`), checked to match.

    Args:
        model_path: an export folder (its model.pt is read) or a checkpoint file.
        data: ratings to use instead of the data the checkpoint's config names.

    Raises:
        MFError: where there is no readable checkpoint, or the data has other users or items than
            the model was trained on.
        ConfigError: where the checkpoint's config is not valid.
        DataError: where the data cannot be found, fetched or read.
    """
    path = Path(model_path)
    if path.is_dir():
        path = path / MODEL_FILE
    model, state = load_model(path)
    config = from_dict(state["config"], where=f"{path} (config)")
    if data is not None:
        config = config.replace(data=str(data))
    dataset = dataset_for(config)
    check_matches(state, dataset, source=str(path))
    return LoadedModel(scorer=FactorScorer.from_model(model), config=config, dataset=dataset, path=path)


def _shown(value: Any) -> str:
    """A value as the client sent it (JSON), cut short."""
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number"}


def _ids(value: Any, field: str, what: str) -> int:
    # bool is an int in Python, but `true` is no user id
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{field}: {_shown(value)} is not an integer {what} id", field=field)
    if not INT64_MIN <= value <= INT64_MAX:  # no id is that large, and numpy could not hold it
        raise RequestError(f"{field}: {_shown(value)} is not a {what} id (out of range)", field=field)
    return value


def parse_pairs(body: Any) -> tuple[np.ndarray, np.ndarray]:
    """A /predict body `[{"user": raw_id, "movie": raw_id}, ...]` as (raw users, raw movies), checked.

    Returns:
        Two int64 arrays of raw ids, in the body's order (whether the ids are known is not checked
        here: `Recommender.indices` does that).

    Raises:
        RequestError: 413 for more than MAX_PAIRS pairs; 422 for a body that is not an array, an
            element that is not an object with exactly the keys user and movie, or an id that is not
            an integer in int64's range.
    """
    if not isinstance(body, list):
        kind = JSON_TYPES.get(type(body), _shown(body))
        raise RequestError(
            f'body: expected a JSON array of {{"user": id, "movie": id}}, got {kind}', field="body"
        )
    if len(body) > MAX_PAIRS:
        raise RequestError(
            f"body: {len(body)} pairs; at most {MAX_PAIRS} per request", field="body", status=413
        )
    users, movies = np.empty(len(body), dtype=np.int64), np.empty(len(body), dtype=np.int64)
    for n, pair in enumerate(body):
        if not isinstance(pair, dict):
            raise RequestError(
                f'[{n}]: expected {{"user": id, "movie": id}}, got {_shown(pair)}', field=f"[{n}]"
            )
        extra = set(pair) - {"user", "movie"}
        if extra:
            raise RequestError(
                f"[{n}]: unknown key {sorted(extra)[0]!r}; expected user, movie", field=f"[{n}]"
            )
        for key in ("user", "movie"):
            if key not in pair:
                raise RequestError(f"[{n}].{key}: missing", field=f"[{n}].{key}")
        users[n] = _ids(pair["user"], f"[{n}].user", "user")
        movies[n] = _ids(pair["movie"], f"[{n}].movie", "movie")
    return users, movies


class Recommender:
    """An export loaded for serving: the ranking it serves, each user's train items, titles by item."""

    def __init__(
        self,
        loaded: LoadedModel,
        choice: RankingChoice,
        *,
        ranking: Ranking | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> None:
        """Serve `ranking`, by default the one `choice` chose; `metrics` are the export's metrics.json.

        Raises:
            ConfigError: where the ranking served is `shrunk-bias` and the model has no item bias.
        """
        d = loaded.dataset
        self.loaded, self.choice, self.metrics = loaded, choice, metrics or {}
        self.scorer = loaded.scorer
        self.counts = item_counts(d.train, d.n_items)
        self.ranking: Ranking = ranking or choice.ranking
        self._scores = ranking_scores(self.ranking, self.scorer, self.counts)
        self._popular = ranking_scores(Ranking(POPULAR), self.scorer, self.counts)
        self._excluded = {
            "trained": rows_by_user(d.train, d.n_users),
            "rated": rows_by_user(d.all_rated(), d.n_users),
        }
        titles = d.titles or {}
        self._titles = [titles.get(int(m), f"movie {int(m)}") for m in d.item_ids]
        self._user_ids, self._item_ids = np.asarray(d.user_ids), np.asarray(d.item_ids)

    @classmethod
    def from_export(
        cls,
        path: str | os.PathLike,
        *,
        data: str | os.PathLike | None = None,
        ranking: Ranking | None = None,
        write_ranking: bool = True,
    ) -> Recommender:
        """Load an export; serve `ranking`, or the export's ranking.json choice (chosen now if absent).

        Args:
            path: an export folder or its model.pt.
            data: ratings to use instead of the data the model's config names.
            ranking: the ranking to serve instead of the export's choice.
            write_ranking: write a choice made now to the export's ranking.json.

        Raises:
            MFError: where the export cannot be loaded (see `load`), or its ranking.json or
                metrics.json is damaged.
            ConfigError: as `load`, or for a `shrunk-bias` ranking of a model without item bias.
            DataError: as `load`.
        """
        loaded = load(path, data=data)
        folder = loaded.path.parent
        choice = ranking_for(folder, loaded.scorer, loaded.dataset, write=write_ranking)
        metrics_file, metrics = folder / METRICS_FILE, {}
        if metrics_file.is_file():  # optional: /health shows its trial id and MSE where there is one
            try:
                metrics = json.loads(metrics_file.read_text())
            except json.JSONDecodeError as e:
                raise MFError(f"{metrics_file}: not JSON ({e}); the export's metrics.json is damaged") from e
        return cls(loaded, choice, ranking=ranking, metrics=metrics)

    @property
    def dataset(self) -> Dataset:
        """The data the model was loaded with."""
        return self.loaded.dataset

    def user_index(self, user_id: int) -> int | None:
        """The index of a raw user id, or None for an id the model does not know."""
        if not INT64_MIN <= user_id <= INT64_MAX:
            return None
        at, found = lookup_many(self._user_ids, np.array([user_id], dtype=np.int64))
        return int(at[0]) if found[0] else None

    def check_k(self, k: int) -> None:
        """RequestError (422, field k) unless `k` is an integer from 1 to the number of items."""
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.dataset.n_items:
            raise RequestError(
                f"k: {k!r} must be an integer from 1 to {self.dataset.n_items} (the catalogue)", field="k"
            )

    def recommend(
        self, user_id: int, k: int = 10, *, fallback: str | None = None, exclude: str = "rated"
    ) -> list[Recommendation]:
        """The user's top k items under the served ranking, best first, leaving out what `exclude`
        says (EXCLUDES: every item the user rated, or those rated in the parts the model trained on).

        An unknown user is a RequestError (404), or with fallback="popular" the k most popular items
        (without a predicted rating: the model knows nothing of that user).

        Args:
            user_id: a raw MovieLens user id.
            k: how many items, 1 to the number of items; fewer come back where fewer are left
                after the exclusion.
            fallback: None, or `popular` for an unknown user.
            exclude: one of EXCLUDES.

        Returns:
            The recommendations, best first, each with the model's predicted rating (None for the
            popular fallback).

        Raises:
            RequestError: 422 for a bad k, fallback or exclude; 404 for an unknown user without a
                fallback.
        """
        self.check_k(k)
        if fallback is not None and fallback not in FALLBACKS:
            raise RequestError(
                f"fallback: {fallback!r} is not one; expected {', '.join(FALLBACKS)}", field="fallback"
            )
        if exclude not in EXCLUDES:
            raise RequestError(
                f"exclude: {exclude!r} is not one; expected {', '.join(EXCLUDES)}", field="exclude"
            )
        user = self.user_index(user_id)
        if user is None:
            if fallback is None:
                raise RequestError(
                    f"user_id {user_id}: not in {self.dataset.source} ({self.dataset.n_users} users); "
                    "ask with fallback=popular for the most popular movies",
                    field="user_id",
                    status=404,
                )
            scores = self._popular(np.zeros(1, dtype=np.int64))  # (1, I)
            top = top_k(scores, np.zeros_like(scores, dtype=bool), k)[0]
            return [
                Recommendation(r + 1, int(self._item_ids[i]), self._titles[i], None)
                for r, i in enumerate(top)
            ]
        scores = self._scores(np.array([user]))  # (1, I)
        items, starts = self._excluded[exclude]
        excluded = np.zeros_like(scores, dtype=bool)
        excluded[0, items[starts[user] : starts[user + 1]]] = True
        top = top_k(scores, excluded, k)[0]
        top = top[top >= 0]
        predicted = self.scorer.predict(np.full(len(top), user), top)  # the model's rating, whatever ranks
        return [
            Recommendation(r + 1, int(self._item_ids[i]), self._titles[i], float(p))
            for r, (i, p) in enumerate(zip(top, predicted, strict=True))
        ]

    def indices(self, users: np.ndarray, movies: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw (user, movie) id arrays as int64 index arrays; RequestError (422) naming the first
        unknown id."""
        u, u_ok = lookup_many(self._user_ids, users)
        i, i_ok = lookup_many(self._item_ids, movies)
        for ok, raw, key, n in (
            (u_ok, users, "user", self.dataset.n_users),
            (i_ok, movies, "movie", self.dataset.n_items),
        ):
            if not ok.all():
                bad = int(np.flatnonzero(~ok)[0])
                raise RequestError(
                    f"[{bad}].{key}: {int(raw[bad])} is not a {key} id of {self.dataset.source} ({n} {key}s)",
                    field=f"[{bad}].{key}",
                )
        return u, i

    def predict_indices(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """The model's predicted rating for index pairs (N,), float32."""
        return self.scorer.predict(users, items)

    def predict(self, pairs: tuple[np.ndarray, np.ndarray]) -> list[dict[str, Any]]:
        """`[{"user", "movie", "predicted_rating"}, ...]` for the raw pairs of `parse_pairs`, in order.

        Raises:
            RequestError: 422 naming the first user or movie id the model does not know.
        """
        users, movies = pairs
        predicted = self.predict_indices(*self.indices(users, movies))
        return [
            {"user": int(u), "movie": int(m), "predicted_rating": float(p)}
            for u, m, p in zip(users, movies, predicted, strict=True)
        ]

    def health(self) -> dict[str, Any]:
        """What is served: the model (trial, MSE), its data, and the ranking with the figures it was
        chosen on. Folders are named, never their paths on the server (the export's folder name,
        the data's file or folder name)."""
        m, c, d = self.metrics, self.choice, self.dataset
        return {
            "status": "ok",
            "model": f"{Path(self.loaded.path).parent.name}/{Path(self.loaded.path).name}",
            "trial_id": m.get("trial_id"),
            "trained_on": list(d.trained_on),
            "epoch": m.get("epoch", m.get("epochs")),
            "val_mse": m.get("val_mse"),
            "test_mse": m.get("test_mse"),
            "selected_by": m.get("objective", "val MSE"),  # best-ranking/ exports: val NDCG@k
            "data": Path(str(d.source)).name,
            "users": d.n_users,
            "items": d.n_items,
            "ranking": {
                "name": str(self.ranking),
                "description": self.ranking.describe(),
                "chosen": self.ranking == c.ranking,  # False: overridden (mf.serve --ranking)
                "chosen_by": c.chosen_by,
                f"val_ndcg@{c.k}": c.candidates.get(str(self.ranking)),
                f"popular_val_ndcg@{c.k}": c.val.get("popular", {}).get("ndcg"),
                f"predicted_val_ndcg@{c.k}": c.val.get("predicted", {}).get("ndcg"),
            },
        }
