"""`python -m mf.recommend`: use an exported model, and judge it as a recommender.

    python -m mf.recommend --model runs/mf-tune/best --user 1 -k 10          # top 10 unseen movies
    python -m mf.recommend --model runs/mf-tune/best --user 1 --json         # the same, as JSON
    python -m mf.recommend --model runs/mf-tune/best --evaluate val -k 10    # precision/recall/NDCG@10

The data comes from the config saved in the checkpoint (or `--data`), and must be the data the model
was trained on: the model knows users and items only by index, and the checkpoint's id mapping is
checked against the data before anything is predicted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mf.config import TrainConfig, from_dict
from mf.data import Dataset, Interactions
from mf.errors import ConfigError, user_errors_exit
from mf.model import MFAdvanced
from mf.ranking import FactorScorer, RankingMetrics, ranking_metrics, top_k
from mf.training import check_matches, dataset_for, load_model

MODEL_FILE = "model.pt"


@dataclass(frozen=True)
class Recommendation:
    rank: int
    movie_id: int
    title: str
    predicted_rating: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "movieId": self.movie_id,
            "title": self.title,
            "predicted_rating": round(self.predicted_rating, 4),
        }


@dataclass(frozen=True)
class LoadedModel:
    """A trained model as numpy factors, with its config and the data it was checked against."""

    scorer: FactorScorer
    config: TrainConfig
    dataset: Dataset
    path: Path


def scorer_from_model(model: MFAdvanced) -> FactorScorer:
    """The model's weights as numpy arrays (its prediction, item for item, without torch)."""

    def weights(name: str) -> np.ndarray:
        return getattr(model, name).weight.detach().cpu().numpy()

    return FactorScorer(
        user_factors=weights("user_emb"),
        item_factors=weights("item_emb"),
        user_bias=weights("user_bias")[:, 0] if model.use_bias else None,
        item_bias=weights("item_bias")[:, 0] if model.use_bias else None,
        offset=float(model.offset.detach().cpu()) if model.use_bias else 0.0,
        sigmoid_high=float(model.sigmoid_high) if model.use_sigmoid else None,
    )


def load(model_path: str | os.PathLike, *, data: str | os.PathLike | None = None) -> LoadedModel:
    """Load an export folder (or a model.pt) and the data of its config (or `data`), checked to match."""
    path = Path(model_path)
    if path.is_dir():
        path = path / MODEL_FILE
    model, state = load_model(path)
    config = from_dict(state["config"], where=f"{path} (config)")
    if data is not None:
        config = config.replace(data=str(data))
    dataset = dataset_for(config)
    check_matches(state, dataset, source=str(path))
    return LoadedModel(scorer=scorer_from_model(model), config=config, dataset=dataset, path=path)


def rated_items(dataset: Dataset, user: int) -> np.ndarray:
    """Every item the user rated anywhere in the data set (train, validation and test)."""
    parts = [p for p in (dataset.train, dataset.val, dataset.test) if p is not None]
    return np.concatenate([p.items[p.users == user] for p in parts])


def recommend(loaded: LoadedModel, raw_user_id: int, *, k: int = 10) -> list[Recommendation]:
    """The k unrated movies with the highest predicted rating for a raw MovieLens user id."""
    if k < 1:
        raise ConfigError(f"-k: {k!r} must be >= 1")
    dataset = loaded.dataset
    user = dataset.user_index(raw_user_id)
    scores = loaded.scorer(np.array([user]))  # (1, n_items)
    exclude = np.zeros_like(scores, dtype=bool)
    exclude[0, rated_items(dataset, user)] = True
    top = top_k(scores, exclude, k)[0]
    titles = dataset.titles or {}
    out = []
    for rank, item in enumerate(i for i in top if i >= 0):
        movie_id = int(dataset.item_ids[item])
        title = titles.get(movie_id, f"movie {movie_id}")
        out.append(Recommendation(rank + 1, movie_id, title, float(scores[0, item])))
    return out


def evaluate(
    loaded: LoadedModel, *, part: str = "val", k: int = 10, threshold: float = 4.0
) -> RankingMetrics:
    """Ranking quality on the split's `val` or `test` part (candidates: items not rated in train)."""
    dataset = loaded.dataset
    heldout: Interactions | None = {"val": dataset.val, "test": dataset.test}.get(part)
    if heldout is None:
        raise ConfigError(
            f"--evaluate: no {part!r} part in this split (the model's config holds out none; "
            "use val, or train with test_n / test_fraction)"
        )
    return ranking_metrics(
        loaded.scorer,
        train=dataset.train,
        heldout=heldout,
        n_users=dataset.n_users,
        n_items=dataset.n_items,
        k=k,
        threshold=threshold,
    )


def format_ranking(metrics: RankingMetrics, part: str) -> str:
    m = metrics
    return (
        f"{part}: precision@{m.k} {m.precision:.4f}  recall@{m.k} {m.recall:.4f}  ndcg@{m.k} {m.ndcg:.4f}  "
        f"over {m.users} users with held-out ratings >= {m.threshold:g} ({m.skipped} users without one skipped; "
        "candidates: every item not rated in train)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mf.recommend",
        description="Top-k unrated movies for a user from an exported model, or its ranking quality.",
    )
    parser.add_argument(
        "--model", type=Path, required=True, help="export folder (<experiment>/best) or a model.pt"
    )
    parser.add_argument("--user", type=int, help="raw MovieLens user id (userId)")
    parser.add_argument("-k", "--k", type=int, default=10, help="how many movies (default 10)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--data", help="ratings to use instead of the data named in the model's config")
    parser.add_argument(
        "--evaluate",
        nargs="?",
        const="val",
        choices=("val", "test"),
        help="report precision@k, recall@k, NDCG@k on this part of the model's split (default val)",
    )
    parser.add_argument(
        "--threshold", type=float, default=4.0, help="--evaluate: held-out ratings >= this are relevant"
    )
    return parser


@user_errors_exit
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.user is None and args.evaluate is None:
        parser.error("give --user ID, --evaluate, or both")
    loaded = load(args.model, data=args.data)
    output: dict[str, Any] = {}
    if args.user is not None:
        recs = recommend(loaded, args.user, k=args.k)
        output["recommendations"] = [r.as_dict() for r in recs]
        if not args.json:
            print(f"top {len(recs)} movies user {args.user} has not rated ({loaded.path}):")
            for r in recs:
                print(f"{r.rank:3d}. {r.predicted_rating:.2f}  {r.title}  (movieId {r.movie_id})")
    if args.evaluate is not None:
        metrics = evaluate(loaded, part=args.evaluate, k=args.k, threshold=args.threshold)
        output["ranking"] = {"part": args.evaluate, **metrics.as_dict()}
        if not args.json:
            print(format_ranking(metrics, args.evaluate))
    if args.json:
        # --user alone: the plain list of recommendations, which is what a caller wants to loop over.
        only_recs = args.evaluate is None
        print(json.dumps(output["recommendations"] if only_recs else output, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
