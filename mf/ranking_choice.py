"""Which ranking an export serves: chosen on its validation part, kept beside it in `ranking.json`.

    choice = choose_ranking(FactorScorer.from_model(model), dataset)   # NDCG@10 on val, every rule
    write_ranking(export_folder, choice)                                # ranking.json, atomically

Every rule of `mf.ranking.RULES` is tried with each weight of `GRID`, on the validation part only
(candidates: items the user did not rate in train; relevant: held-out ratings >= 4), and the one
with the highest NDCG@k is served. The test part, where the split has one, is scored once for the
chosen ranking and the two baselines as a check, and never takes part in the choice. The file
records the model's weight fingerprint, so a choice is not reused for another model.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from mf.atomic import write_json
from mf.data import Dataset, Interactions
from mf.errors import MFError
from mf.ranking import (
    BLEND,
    CONFIDENCE,
    POPULAR,
    PREDICTED,
    RELEVANT_RATING,
    SHRUNK_BIAS,
    FactorScorer,
    Ranking,
    RankingMetrics,
    item_counts,
    ranking_metrics_many,
    ranking_scores,
)

RANKING_FILE = "ranking.json"
FORMAT = 1
CHOICE_K = 10
CHOICE_PART = "val"
MAX_USERS = 20_000
"""Users the choice scores at most (a seeded sample beyond that): scoring every user of a large set
would cost minutes per rule, and a sample this large keeps the NDCG's standard error small."""
MAX_CELLS = 300_000_000
"""Users x items the choice scores per rule at most: each rule ranks every candidate item of every
sampled user, and the choice tries up to 26 rankings, so on a large catalogue MAX_USERS users would
take minutes; the cap samples fewer users there (2,000 at 150k items), but never fewer than
MIN_USERS."""
MIN_USERS = 1_000
BUDGET_CELLS = MAX_CELLS // 10
"""Users x items per rule where the export runs at the end of a time budget (tune.run
--time-budget-s), so that on large sets the choice does not take most of the export's time
(docs/decisions.md); `python -m tune.export` scores MAX_CELLS again at any time."""


def users_to_score(n_items: int, max_users: int = MAX_USERS, max_cells: int = MAX_CELLS) -> int:
    """How many users a ranking figure over `n_items` items samples: at most `max_users` and
    `max_cells` / `n_items`, but never fewer than MIN_USERS (scaled down with `max_cells`)."""
    floor = MIN_USERS * max_cells // MAX_CELLS
    return min(max_users, max(floor, max_cells // max(n_items, 1)))


GRID: dict[str, tuple[float, ...]] = {
    CONFIDENCE: (0.5, 1, 2, 4, 8, 16, 32, 64),
    SHRUNK_BIAS: (1, 3, 10, 30, 100, 300, 1000),
    BLEND: (0.125, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4),
}
"""The weights tried per rule: geometric, from barely changing the predicted order to nearly popularity."""


def candidate_rankings(scorer: FactorScorer) -> list[Ranking]:
    """Every ranking the choice compares: the two baselines first, then each rule at each weight."""
    out = [Ranking(PREDICTED), Ranking(POPULAR)]
    for rule, weights in GRID.items():
        if rule == SHRUNK_BIAS and scorer.item_bias is None:
            continue  # a model trained with bias: false has no item bias to shrink
        out += [Ranking(rule, float(w)) for w in weights]
    return out


@dataclass(frozen=True)
class RankingChoice:
    """The ranking chosen for one model, and the figures it was chosen on."""

    ranking: Ranking
    k: int
    threshold: float
    users: int
    """Users the choice was scored over (with a held-out rating >= threshold, sampled past MAX_USERS)."""
    fingerprint: str
    """`FactorScorer.fingerprint()` of the model it was chosen for."""
    val: dict[str, dict[str, float]]
    """Metrics on val of "served", "popular" and "predicted" (precision, recall, ndcg)."""
    test: dict[str, dict[str, float]] | None
    """The same on test, a check only, where the split holds a test part."""
    candidates: dict[str, float]
    """NDCG@k on val of every ranking tried, by `str(ranking)`."""
    chosen_with: str | None = None
    """Where the choice was carried to a refit of the model it was made with (`carry_choice`): the
    fingerprint of that model, trained on train only; None: made with this model."""

    @property
    def chosen_by(self) -> str:
        """How the ranking was chosen, in words."""
        if not self.val:
            return (
                "nothing: the model trained on its val part, so no ranking was chosen (the predicted rating)"
            )
        how = f"ndcg@{self.k} on {CHOICE_PART} (held-out ratings >= {self.threshold:g}, {self.users} users)"
        if self.chosen_with is not None:
            how += ", with the model before its refit (trained on train only)"
        return how

    def to_dict(self) -> dict[str, Any]:
        """The choice as ranking.json holds it (format FORMAT), with the ranking's description and
        `chosen_by` in words."""
        return {
            "format": FORMAT,
            "ranking": str(self.ranking),
            "description": self.ranking.describe(),
            "chosen_by": self.chosen_by,
            "chosen_with": self.chosen_with,
            "k": self.k,
            "threshold": self.threshold,
            "users": self.users,
            "model_fingerprint": self.fingerprint,
            "val": self.val,
            "test": self.test,
            "candidates": self.candidates,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, where: str) -> RankingChoice:
        """The choice `to_dict` wrote.

        Args:
            d: the dict read from ranking.json.
            where: the file it came from, named in errors.

        Raises:
            MFError: where `d` is not a ranking choice of format FORMAT, or a field is missing or
                bad (a ranking that does not parse included).
        """
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise MFError(
                f"{where}: not a ranking choice (format {FORMAT} expected); delete it to choose again"
            )
        try:
            return cls(
                ranking=Ranking.parse(d["ranking"]),
                k=int(d["k"]),
                threshold=float(d["threshold"]),
                users=int(d["users"]),
                fingerprint=str(d["model_fingerprint"]),
                val=d["val"],
                test=d.get("test"),
                candidates=dict(d.get("candidates", {})),
                chosen_with=d.get("chosen_with"),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise MFError(
                f"{where}: damaged ranking choice ({type(e).__name__}: {e}); delete it to choose again"
            ) from e


def _metrics(m: RankingMetrics) -> dict[str, float]:
    return {"precision": m.precision, "recall": m.recall, "ndcg": m.ndcg}


def sample_users(heldout: Interactions, threshold: float, max_users: int, seed: int) -> Interactions:
    """The held-out rows of at most `max_users` users with a relevant rating (seeded sample).

    Args:
        heldout: the held-out part.
        threshold: a rating at or above it is relevant.
        max_users: how many users with a relevant rating to keep at most.
        seed: seeds the sample.

    Returns:
        `heldout` itself where it has no more such users; else every row (relevant or not) of the
        users sampled.
    """
    users = np.unique(heldout.users[heldout.ratings >= threshold])
    if len(users) <= max_users:
        return heldout
    keep = np.random.default_rng(seed).choice(users, size=max_users, replace=False)
    rows = np.isin(heldout.users, keep)
    return Interactions(users=heldout.users[rows], items=heldout.items[rows], ratings=heldout.ratings[rows])


def evaluate_rankings(
    rankings: Mapping[str, Ranking],
    scorer: FactorScorer,
    dataset: Dataset,
    *,
    part: str = "val",
    k: int = CHOICE_K,
    threshold: float = RELEVANT_RATING,
    counts: np.ndarray | None = None,
    heldout: Interactions | None = None,
) -> dict[str, RankingMetrics]:
    """precision@k, recall@k, NDCG@k of each ranking on `part` (candidates: items not rated in train),
    in one pass that computes each batch's predictions once.

    The one evaluation behind `mf.recommend --evaluate` and the choice; a tuning trial can call it
    per epoch for its NDCG@k (`counts` and `heldout` may be passed in, to skip recomputing them).

    Args:
        rankings: the rankings to judge, by name.
        scorer: the model's scorer.
        dataset: the data the model was trained on.
        part: the held-out part (`val` or `test`), where `heldout` is not given.
        k: the cut-off.
        threshold: a held-out rating at or above it makes its item relevant.
        counts: `item_counts(dataset.train, dataset.n_items)`, where already computed.
        heldout: the held-out ratings to judge on (a sample of a part), instead of `part`.

    Returns:
        The RankingMetrics of each name of `rankings`.

    Raises:
        DataError: where `part` is not held out from the model (and `heldout` is not given).
        ConfigError: for k < 1, or a `shrunk-bias` ranking of a model without item bias.
    """
    if heldout is None:
        heldout = dataset.held_out(part)
    if counts is None:
        counts = item_counts(dataset.train, dataset.n_items)
    shared = scorer.last_batch_memo()
    return ranking_metrics_many(
        {name: ranking_scores(r, shared, counts) for name, r in rankings.items()},
        train=dataset.train,
        heldout=heldout,
        n_users=dataset.n_users,
        n_items=dataset.n_items,
        k=k,
        threshold=threshold,
    )


def choose_ranking(
    scorer: FactorScorer,
    dataset: Dataset,
    *,
    k: int = CHOICE_K,
    threshold: float = RELEVANT_RATING,
    max_users: int = MAX_USERS,
    seed: int = 0,
    max_cells: int = MAX_CELLS,
) -> RankingChoice:
    """The candidate ranking with the highest NDCG@k on the validation part; test only checked after.

    Ties go to the earlier candidate (the baselines, then lower weights): the simpler ranking. The
    users scored are a seeded sample (`users_to_score(n_items, max_users, max_cells)`).

    Args:
        scorer: the model's scorer.
        dataset: the data the model was trained on, with a val part.
        k: the cut-off of the NDCG.
        threshold: a held-out rating at or above it makes its item relevant.
        max_users: at most this many users are scored (see `users_to_score`).
        seed: seeds the sample of users.
        max_cells: at most about this many users x items are scored per ranking.

    Returns:
        The chosen ranking with its val figures (and test figures where the split has a test part).

    Raises:
        DataError: where the dataset has no val part (the model trained on it).
        ConfigError: where k < 1.
    """
    counts = item_counts(dataset.train, dataset.n_items)
    max_users = users_to_score(dataset.n_items, max_users, max_cells)
    val = sample_users(dataset.held_out(CHOICE_PART), threshold, max_users, seed)
    candidates = {str(r): r for r in candidate_rankings(scorer)}
    tried = evaluate_rankings(
        candidates, scorer, dataset, k=k, threshold=threshold, counts=counts, heldout=val
    )
    best = max(tried, key=lambda name: tried[name].ndcg)  # max keeps the first of equal values
    chosen = candidates[best]
    named = {"served": chosen, "popular": Ranking(POPULAR), "predicted": Ranking(PREDICTED)}
    test = None
    if dataset.test is not None:
        held = sample_users(dataset.test, threshold, max_users, seed)
        checked = evaluate_rankings(
            named, scorer, dataset, k=k, threshold=threshold, counts=counts, heldout=held
        )
        test = {name: _metrics(m) for name, m in checked.items()}
    return RankingChoice(
        ranking=chosen,
        k=k,
        threshold=threshold,
        users=tried[best].users,
        fingerprint=scorer.fingerprint(),
        val={name: _metrics(tried[str(r)]) for name, r in named.items()},
        test=test,
        candidates={name: m.ndcg for name, m in tried.items()},
    )


def carry_choice(
    choice: RankingChoice, scorer: FactorScorer, dataset: Dataset, *, max_cells: int = MAX_CELLS
) -> RankingChoice:
    """`choice`, made with a model trained on train only, for `scorer`'s model, a refit of it on more
    parts of the same data (`dataset`): the same ranking, chosen on the same val figures (a refit's
    val part is no longer held out, so nothing is chosen with it), and the test check scored again
    with the refit model where the split holds a test part.

    Args:
        choice: the choice made with the model trained on train only.
        scorer: the refit model's scorer.
        dataset: the refit's data (its training part merged from several parts).
        max_cells: at most about this many users x items are scored per ranking of the test check.

    Returns:
        `choice` with the refit model's fingerprint and test figures, and `chosen_with` set to
        the fingerprint of the model it was made with.
    """
    test = None
    if dataset.test is not None:
        named = {"served": choice.ranking, "popular": Ranking(POPULAR), "predicted": Ranking(PREDICTED)}
        held = sample_users(
            dataset.test, choice.threshold, users_to_score(dataset.n_items, max_cells=max_cells), 0
        )
        checked = evaluate_rankings(
            named, scorer, dataset, k=choice.k, threshold=choice.threshold, heldout=held
        )
        test = {name: _metrics(m) for name, m in checked.items()}
    return replace(choice, fingerprint=scorer.fingerprint(), test=test, chosen_with=choice.fingerprint)


def write_ranking(folder: str | os.PathLike, choice: RankingChoice) -> Path:
    """Write `choice` to `<folder>/ranking.json` atomically (a reader sees the old file or the new
    one, whole); return the file's path. OSError where it cannot be written."""
    return write_json(Path(folder) / RANKING_FILE, choice.to_dict())


def read_ranking(folder: str | os.PathLike) -> RankingChoice | None:
    """The choice in `<folder>/ranking.json`, or None where there is no such file.

    Raises:
        MFError: where the file is not JSON or not a valid ranking choice.
        OSError: where the file exists but cannot be read.
    """
    path = Path(folder) / RANKING_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise MFError(f"{path}: not JSON ({e}); delete it to choose again") from e
    return RankingChoice.from_dict(data, where=str(path))


def unchosen(scorer: FactorScorer, *, k: int = CHOICE_K, threshold: float = RELEVANT_RATING) -> RankingChoice:
    """The ranking of a model no choice can be made for, as it trained on its val part (a refit that
    `mf.train` wrote, without the choice tune.export carries over): the predicted rating, with no
    figures, recorded for `scorer`'s model with `k` and `threshold`."""
    return RankingChoice(
        ranking=Ranking(PREDICTED),
        k=k,
        threshold=threshold,
        users=0,
        fingerprint=scorer.fingerprint(),
        val={},
        test=None,
        candidates={},
    )


def ranking_for(
    folder: str | os.PathLike, scorer: FactorScorer, dataset: Dataset, *, write: bool = True
) -> RankingChoice:
    """The export's ranking choice: read from ranking.json when it was made for this model, else chosen
    now on the val part (and written there when `write` and the folder allows it; a read-only
    export still serves); `unchosen` where the model trained on its val part.

    Args:
        folder: the export folder.
        scorer: the exported model's scorer.
        dataset: the data it was trained on.
        write: write a new choice to the folder's ranking.json.

    Raises:
        MFError: where the folder's ranking.json is damaged (delete it to choose again).
    """
    choice = read_ranking(folder)
    if choice is not None and choice.fingerprint == scorer.fingerprint():
        return choice
    choice = choose_ranking(scorer, dataset) if dataset.val is not None else unchosen(scorer)
    if write:
        try:
            write_ranking(folder, choice)
        except OSError as e:
            print(
                f"note: could not write {Path(folder) / RANKING_FILE} ({e}); chose in memory", file=sys.stderr
            )
    return choice
