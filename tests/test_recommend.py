"""Recommendations from an exported model, and ranking metrics checked by hand on a tiny case."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mf import recommend
from mf import train as mf_train
from mf.data import Interactions
from mf.ranking import ranking_metrics, top_k
from mf.training import load_model

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-latest-small"


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    """A folder laid out like <experiment>/best/ (config.yaml, metrics.json, model.pt), trained quickly."""
    out = tmp_path_factory.mktemp("best")
    code = mf_train.main(["--data", str(DATA), "--epochs", "3", "--out", str(out), "--quiet"])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def ratings() -> pd.DataFrame:
    return pd.read_csv(DATA / "ratings.csv")


def test_recommend_json_lists_k_movies_the_user_has_not_rated(export: Path, ratings: pd.DataFrame, capsys):
    assert recommend.main(["--model", str(export), "--user", "1", "-k", "10", "--json"]) == 0
    recs = json.loads(capsys.readouterr().out)
    titles = pd.read_csv(DATA / "movies.csv").set_index("movieId")["title"]
    rated = set(ratings.loc[ratings["userId"] == 1, "movieId"])
    # Ten movies, none of which user 1 rated anywhere in the data, with their real titles.
    assert len(recs) == 10
    assert not {r["movieId"] for r in recs} & rated
    assert [r["title"] for r in recs] == [titles[r["movieId"]] for r in recs]
    # Best first, and ratings the model can output (sigmoid * 5.5).
    predicted = [r["predicted_rating"] for r in recs]
    assert predicted == sorted(predicted, reverse=True)
    assert all(0 < p <= 5.5 for p in predicted)
    assert [r["rank"] for r in recs] == list(range(1, 11))


def test_recommend_prints_ten_titles(export: Path, capsys):
    assert recommend.main(["--model", str(export), "--user", "1", "-k", "10", "--json"]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert recommend.main(["--model", str(export), "--user", "1", "-k", "10"]) == 0
    header, *lines = capsys.readouterr().out.strip().splitlines()
    # A header, then one line per movie with its title, in the same order as --json.
    assert "user 1" in header
    assert len(lines) == 10
    for line, rec in zip(lines, recs, strict=True):
        assert rec["title"] in line and f"movieId {rec['movieId']}" in line


def test_recommend_scores_match_the_torch_model(export: Path):
    model, _ = load_model(export / "model.pt")
    loaded = recommend.load(export)
    users = torch.tensor([0, 5, 42])
    items = torch.tensor([0, 100, 2000])
    with torch.no_grad():
        expected = model(users, items).numpy()
    # The numpy scorer predicts what the model predicts.
    got = loaded.scorer(users.numpy())[np.arange(3), items.numpy()]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_unknown_user_is_one_line_and_exit_2(export: Path, capsys):
    assert recommend.main(["--model", str(export), "--user", "999999"]) == 2
    err = capsys.readouterr().err
    # The message names the user and the data; no traceback.
    assert "999999" in err and "Traceback" not in err and err.count("\n") == 1


def test_export_that_does_not_match_the_data_is_a_clear_error(export: Path, tmp_path: Path, capsys):
    other = tmp_path / "ratings.csv"
    other.write_text("userId,movieId,rating,timestamp\n1,1,4.0,1\n1,2,3.0,2\n2,1,5.0,3\n2,3,2.0,4\n")
    assert recommend.main(["--model", str(export), "--user", "1", "--data", str(other)]) == 2
    err = capsys.readouterr().err
    # It says the model was trained on other users / items; no traceback.
    assert "610 users" in err and "same data set" in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_missing_export_is_a_clear_error(tmp_path: Path, capsys):
    assert recommend.main(["--model", str(tmp_path), "--user", "1"]) == 2
    assert "no checkpoint there" in capsys.readouterr().err


def test_evaluate_reports_ranking_metrics_and_users(export: Path, capsys):
    assert recommend.main(["--model", str(export), "--evaluate", "-k", "10", "--json"]) == 0
    ranking = json.loads(capsys.readouterr().out)["ranking"]
    # Every user is either evaluated or skipped (no held-out rating >= 4); metrics are fractions.
    assert ranking["part"] == "val" and ranking["k"] == 10
    assert ranking["users"] + ranking["skipped"] == 610
    assert ranking["users"] > 400
    for key in ("precision", "recall", "ndcg"):
        assert 0 <= ranking[key] <= 1
    # No test part in this split: a clear message.
    assert recommend.main(["--model", str(export), "--evaluate", "test"]) == 2
    assert "no 'test' part" in capsys.readouterr().err


def parts(rows: list[tuple[int, int, float]]) -> Interactions:
    users, items, ratings = zip(*rows, strict=True)
    return Interactions(
        users=np.array(users, dtype=np.int64),
        items=np.array(items, dtype=np.int64),
        ratings=np.array(ratings, dtype=np.float32),
    )


def test_ranking_metrics_equal_hand_computed_values():
    scores = np.array(
        [
            [0.9, 0.8, 0.7, 0.6, 0.5],  # user 0
            [0.1, 0.2, 0.3, 0.4, 0.5],  # user 1
            [0.5, 0.4, 0.3, 0.2, 0.1],  # user 2
        ]
    )
    train = parts([(0, 0, 5.0), (1, 4, 3.0), (1, 3, 4.0), (2, 0, 4.0)])
    heldout = parts([(0, 1, 5.0), (0, 3, 4.0), (0, 4, 2.0), (1, 1, 4.5), (2, 2, 3.0)])
    m = ranking_metrics(lambda u: scores[u], train=train, heldout=heldout, n_users=3, n_items=5, k=2)
    # user 0: train item 0 masked, top 2 = [1, 2], relevant {1, 3}: 1 hit at rank 1.
    #   precision 1/2, recall 1/2, NDCG = 1 / (1 + 1/log2(3)).
    # user 1: train items 3, 4 masked, top 2 = [2, 1], relevant {1}: 1 hit at rank 2.
    #   precision 1/2, recall 1, NDCG = (1/log2(3)) / 1.
    # user 2: no held-out rating >= 4: skipped.
    assert m.users == 2 and m.skipped == 1
    assert m.precision == pytest.approx(0.5)
    assert m.recall == pytest.approx(0.75)
    assert m.ndcg == pytest.approx((1 / (1 + 1 / math.log2(3)) + 1 / math.log2(3)) / 2)


def test_top_k_never_returns_excluded_items_and_pads():
    scores = np.array([[3.0, 2.0, 1.0]])
    exclude = np.array([[True, False, True]])
    # Only one candidate: it comes first, then -1 for the missing places.
    assert top_k(scores, exclude, 3).tolist() == [[1, -1, -1]]
    assert top_k(scores, np.zeros_like(exclude), 2).tolist() == [[0, 1]]
