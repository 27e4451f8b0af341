"""`python -m mf.recommend`: use an exported model, and judge it as a recommender.

    python -m mf.recommend --model runs/mf-tune/best --user 1 -k 10          # top 10 movies the user has not rated
    python -m mf.recommend --model runs/mf-tune/best --user 1 --json         # the same, as JSON (= GET /recommend/1)
    python -m mf.recommend --model runs/mf-tune/best --evaluate val -k 10    # precision/recall/NDCG@10, and baselines

The data comes from the config saved in the checkpoint (or `--data`), and must be the data the model
was trained on: the model knows users and items only by index, and the checkpoint's id mapping is
checked against the data before anything is predicted.

Movies are ranked the way `python -m mf.serve` ranks them: by the export's `ranking.json` (chosen on
the validation part the first time, see mf.ranking_choice), or `--ranking`. "Not rated" means not
rated at all, in any part of the data; `--exclude trained`: not rated in the parts the model trained
on, the candidates `--evaluate` judges (see mf.serving).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mf.errors import user_errors_exit
from mf.ranking import POPULAR, PREDICTED, RELEVANT_RATING, Ranking, RankingMetrics
from mf.ranking_choice import evaluate_rankings
from mf.serving import EXCLUDES, FALLBACKS, LoadedModel, Recommendation, Recommender, load

__all__ = ["LoadedModel", "Recommendation", "evaluate", "load", "recommend"]


def recommend(
    recommender: Recommender,
    raw_user_id: int,
    *,
    k: int = 10,
    fallback: str | None = None,
    exclude: str = "rated",
) -> list[Recommendation]:
    """The k best movies for a raw MovieLens user id, none they rated (see Recommender.recommend).

    Args:
        recommender: the loaded export.
        raw_user_id: a MovieLens userId.
        k: how many movies.
        fallback: None, or `popular` for a user the model does not know.
        exclude: `rated` (every movie the user rated) or `trained` (those in the training parts).

    Raises:
        RequestError: for a bad k, fallback or exclude, or an unknown user without a fallback.
    """
    return recommender.recommend(raw_user_id, k, fallback=fallback, exclude=exclude)


def evaluate(
    recommender: Recommender, *, part: str = "val", k: int = 10, threshold: float = RELEVANT_RATING
) -> dict[str, RankingMetrics]:
    """Ranking quality on `val` or `test` of the served ranking and of the two baselines (the model's
    predicted rating, most popular in its training part): the same candidates (not rated in the parts
    the model trained on) and relevance.

    Args:
        recommender: the loaded export.
        part: `val` or `test`.
        k: the cut-off.
        threshold: a held-out rating at or above it makes its item relevant.

    Returns:
        The RankingMetrics of "served", "predicted" and "popular".

    Raises:
        DataError: where `part` is not held out from the model.
        ConfigError: where k < 1.
    """
    rankings = {"served": recommender.ranking, PREDICTED: Ranking(PREDICTED), POPULAR: Ranking(POPULAR)}
    return evaluate_rankings(
        rankings,
        recommender.scorer,
        recommender.dataset,
        part=part,
        k=k,
        threshold=threshold,
        counts=recommender.counts,
    )


def format_ranking(
    results: dict[str, RankingMetrics], part: str, served: Ranking, trained_on: tuple[str, ...] = ("train",)
) -> str:
    """`evaluate`'s results as text: a line saying what was judged, then a line per ranking.

    Args:
        results: what `evaluate` returned (not empty; its names among served, predicted, popular).
        part: the part judged, for the heading.
        served: the served ranking, for its label.
        trained_on: the parts the model trained on, which were not candidates.
    """
    first = next(iter(results.values()))
    lines = [
        f"{part}: over {first.users} users with held-out ratings >= {first.threshold:g} ({first.skipped} users "
        f"without one skipped; candidates: every item not rated in {'+'.join(trained_on)})"
    ]
    labels = {"served": f"served ({served})", PREDICTED: "predicted rating", POPULAR: "most popular"}
    for name, m in results.items():
        lines.append(
            f"  {labels[name]:24s} precision@{m.k} {m.precision:.4f}  recall@{m.k} {m.recall:.4f}  "
            f"ndcg@{m.k} {m.ndcg:.4f}"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `python -m mf.recommend`."""
    parser = argparse.ArgumentParser(
        prog="python -m mf.recommend",
        description="Top-k movies for a user from an exported model, or its ranking quality.",
    )
    parser.add_argument(
        "--model", type=Path, required=True, help="export folder (<experiment>/best) or a model.pt"
    )
    parser.add_argument("--user", type=int, help="raw MovieLens user id (userId)")
    parser.add_argument("-k", "--k", type=int, default=10, help="how many movies (default 10)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--data", help="ratings to use instead of the data named in the model's config")
    parser.add_argument(
        "--ranking",
        type=Ranking.parse,
        help="rank by this instead of the export's ranking.json: predicted, popular, confidence:W, "
        "shrunk-bias:W or blend:W (see mf.ranking.RULES)",
    )
    parser.add_argument(
        "--exclude",
        choices=EXCLUDES,
        default="rated",
        help="--user: leave out every movie the user rated (rated, the default), or only those rated in "
        "the parts the model trained on (trained: the candidates --evaluate judges)",
    )
    parser.add_argument(
        "--fallback",
        choices=FALLBACKS,
        help="--user: for a user the model does not know, the most popular movies instead of an error",
    )
    parser.add_argument(
        "--evaluate",
        nargs="?",
        const="val",
        choices=("val", "test"),
        help="report precision@k, recall@k, NDCG@k on this part of the model's split (default val), "
        "for the served ranking, the predicted rating and the most popular movies",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=RELEVANT_RATING,
        help="--evaluate: held-out ratings >= this are relevant",
    )
    return parser


@user_errors_exit
def main(argv: list[str] | None = None) -> int:
    """`python -m mf.recommend`: print a user's recommendations and/or the ranking figures.

    Args:
        argv: the command line after the program name (None: sys.argv's).

    Returns:
        0; 2 for a user's mistake (an MFError: unknown user, bad k, an export or data that cannot
        be loaded), printed as one `error:` line. argparse exits with status 2 for flags it refuses
        or where neither --user nor --evaluate is given.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.user is None and args.evaluate is None:
        parser.error("give --user ID, --evaluate, or both")
    recommender = Recommender.from_export(args.model, data=args.data, ranking=args.ranking)
    output: dict[str, Any] = {}
    if args.user is not None:
        recs = recommend(recommender, args.user, k=args.k, fallback=args.fallback, exclude=args.exclude)
        output["recommendations"] = [r.as_dict() for r in recs]
        if not args.json:
            trained = "+".join(recommender.dataset.trained_on)
            where = "at all" if args.exclude == "rated" else f"in the parts the model trained on ({trained})"
            print(
                f"top {len(recs)} movies user {args.user} has not rated {where}, ranked by "
                f"{recommender.ranking} ({recommender.loaded.path}):"
            )
            for r in recs:
                rating = "  -  " if r.predicted_rating is None else f"{r.predicted_rating:.2f}"
                print(f"{r.rank:3d}. {rating}  {r.title}  (movieId {r.movie_id})")
    if args.evaluate is not None:
        results = evaluate(recommender, part=args.evaluate, k=args.k, threshold=args.threshold)
        output["ranking"] = {
            "part": args.evaluate,
            "served": str(recommender.ranking),
            **results["served"].as_dict(),
            "baselines": {name: m.as_dict() for name, m in results.items() if name != "served"},
        }
        if not args.json:
            print(format_ranking(results, args.evaluate, recommender.ranking, recommender.dataset.trained_on))
    if args.json:
        # --user alone: the plain list of recommendations, which is what a caller wants to loop over.
        only_recs = args.evaluate is None
        print(json.dumps(output["recommendations"] if only_recs else output, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
