"""A user's own split: a global time split, held-out parts given as files of their own, and the
parts a refit trains on (`train_on`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mf import train as mf_train
from mf.data import Dataset, Interactions, prepare_dataset
from mf.errors import ConfigError
from mf.training import load_model
from tests.files import ml_latest_small

DATA = ml_latest_small()


def ratings_csv(path: Path, rows: list[tuple[int, int, float, int]]) -> Path:
    path.write_text(
        "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in rows)
    )
    return path


def triples(part: Interactions, data: Dataset) -> set[tuple[int, int, float]]:
    """A part as raw (user, movie, rating) triples."""
    users, items = data.user_ids[part.users].tolist(), data.item_ids[part.items].tolist()
    return set(zip(users, items, part.ratings.tolist(), strict=True))


# Ten ratings, one per second; user 3 and movie 40 first appear at the very end.
TEN = [
    (1, 10, 4.0, 1), (2, 20, 3.0, 2), (1, 20, 5.0, 3), (2, 10, 2.0, 4), (1, 30, 3.5, 5),
    (2, 30, 4.5, 6), (1, 10, 1.0, 7), (2, 20, 2.5, 8), (3, 10, 3.0, 9), (1, 40, 4.0, 10),
]  # fmt: skip


def test_time_split_holds_out_the_latest_ratings_of_the_whole_file(tmp_path: Path):
    path = ratings_csv(tmp_path / "ratings.csv", TEN[::-1])  # file order is not time order
    data = prepare_dataset(path, split="time", val_fraction=0.2, test_fraction=0.2)
    # Seconds 1-6 train, 7-8 validate, 9-10 test: the cut is by time, across users.
    assert triples(data.train, data) == {(u, i, r) for u, i, r, t in TEN if t <= 6}
    assert triples(data.val, data) == {(1, 10, 1.0), (2, 20, 2.5)}
    # The test part's two ratings name a user (3) and a movie (40) that training has not seen: the
    # model knows nothing of them, so they are left out of the test part and counted.
    assert len(data.test) == 0 and data.unseen == {"val": 0, "test": 2}
    # They are still ratings their users made (what serving never recommends again).
    assert triples(data.all_rated(), data) == {(u, i, r) for u, i, r, t in TEN}


def test_time_split_cuts_ties_by_user_id_and_is_reproducible(tmp_path: Path):
    # Ten users rate movie 10 in second 1 and movie 11 in second 100, the file in reverse user order.
    rows = [(u, 10, 3.0, 1) for u in range(10, 0, -1)] + [(u, 11, 4.0, 100) for u in range(10, 0, -1)]
    path = ratings_csv(tmp_path / "ratings.csv", rows)
    a = prepare_dataset(path, split="time", val_fraction=0.3, test_fraction=0.0)
    b = prepare_dataset(path, split="time", val_fraction=0.3, test_fraction=0.0)
    # 6 of 20 ratings validate: the latest second, and within it the highest user ids.
    assert sorted(a.user_ids[a.val.users].tolist()) == [5, 6, 7, 8, 9, 10] and a.test is None
    assert set(a.item_ids[a.val.items].tolist()) == {11} and a.unseen == {"val": 0}
    assert np.array_equal(a.train.users, b.train.users) and np.array_equal(a.val.users, b.val.users)


def test_test_data_is_the_test_part_mapped_through_the_training_datas_ids(tmp_path: Path):
    train = ratings_csv(tmp_path / "train.csv", TEN[:8])
    test = ratings_csv(
        tmp_path / "test.csv",
        [(1, 30, 2.0, 20), (2, 10, 5.0, 21), (9, 10, 3.0, 22), (1, 99, 3.0, 23), (9, 99, 1.0, 24)],
    )
    data = prepare_dataset(train, split="last-n", val_n=1, test_data=test)
    # Known users and movies only: user 9 and movie 99 are not in the training data.
    assert triples(data.test, data) == {(1, 30, 2.0), (2, 10, 5.0)}
    assert data.unseen == {"test": 3}
    # The training data is split into train and val as usual (each user's last rating is val).
    assert triples(data.val, data) == {(1, 10, 1.0), (2, 20, 2.5)}


def test_val_data_replaces_the_validation_part_split_from_the_data(tmp_path: Path):
    train = ratings_csv(tmp_path / "train.csv", TEN[:8])
    val = ratings_csv(tmp_path / "val.csv", [(1, 20, 4.5, 30), (3, 20, 4.0, 31)])
    data = prepare_dataset(train, split="last-n", val_n=1, val_data=val)
    # All eight ratings train; the validation part is the file's known rating.
    assert len(data.train) == 8 and data.test is None
    assert triples(data.val, data) == {(1, 20, 4.5)} and data.unseen == {"val": 1}


def test_a_test_part_given_twice_is_refused_before_any_file_is_read(tmp_path: Path):
    # test_data is the test part: test_n or test_fraction beside it would hold out a second one.
    with pytest.raises(ConfigError, match="test_data.*test_n"):
        prepare_dataset(tmp_path / "missing.csv", test_n=5, test_data=tmp_path / "test.csv")
    with pytest.raises(ConfigError, match="test_data.*test_n and test_fraction must be 0"):
        mf_train.config_from_args(
            mf_train.build_parser().parse_args(["--test-data", "t.csv", "--test-fraction", "0.1"])
        )


def test_train_on_merges_the_held_out_parts_into_training():
    split = prepare_dataset(DATA, test_n=5)
    refit = prepare_dataset(DATA, test_n=5, train_on="train+val")
    every = prepare_dataset(DATA, test_n=5, train_on="all")
    # train+val: the validation ratings join training; no val part is held out, the test part stays.
    assert len(refit.train) == len(split.train) + len(split.val)
    assert refit.val is None and np.array_equal(refit.test.items, split.test.items)
    assert triples(refit.train, refit) == triples(split.train, split) | triples(split.val, split)
    # all: every rating trains, nothing is held out.
    assert len(every.train) == 100_836 and every.val is None and every.test is None
    # training_on builds the same parts from a loaded split, without reading the file again.
    again = split.training_on("train+val")
    assert np.array_equal(again.train.users, refit.train.users)
    assert np.array_equal(again.train.items, refit.train.items) and again.trained_on == ("train", "val")


def test_mf_train_scores_the_test_file_on_exactly_its_known_ratings(tmp_path: Path):
    ratings = pd.read_csv(DATA / "ratings.csv")
    known = ratings.sample(300, random_state=0).assign(rating=3.0)
    unknown_users = known.head(20).assign(userId=known["userId"].head(20) + 10_000)
    unknown_movies = known.tail(10).assign(movieId=known["movieId"].tail(10) + 1_000_000)
    test = pd.concat([known, unknown_users, unknown_movies])
    test.to_csv(tmp_path / "test.csv", index=False)
    out = tmp_path / "out"
    code = mf_train.main(
        [
            "--data",
            str(DATA),
            "--test-data",
            str(tmp_path / "test.csv"),
            "--epochs",
            "2",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # 300 ratings of known users and movies are scored; the 30 others are counted, not scored.
    assert metrics["test_ratings"] == 300 and metrics["test_unseen"] == 30
    # The test MSE is the model's error on exactly those 300, computed here from raw ids.
    model, state = load_model(out / "model.pt")
    users = np.searchsorted(state["user_ids"].numpy(), known["userId"].to_numpy())
    items = np.searchsorted(state["item_ids"].numpy(), known["movieId"].to_numpy())
    import torch

    with torch.no_grad():
        predicted = model(torch.from_numpy(users), torch.from_numpy(items)).numpy()
    assert metrics["test_mse"] == pytest.approx(float(np.mean((predicted - 3.0) ** 2)), rel=1e-5)
