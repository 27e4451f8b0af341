"""prepare_dataset: label encoding, the stable user/time order, and the per-user split methods
(tests/test_own_split.py: the time split and parts given as files)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mf.data import SPLIT_METHODS, Dataset, Interactions, prepare_dataset
from mf.data.encode import label_encode
from mf.data.split import sort_by_user_time, split_last_n, split_random
from mf.errors import ConfigError, DataError
from tests.files import ml_latest_small

SMALL_DIR = ml_latest_small()  # the package's own copy


def _ratings_file(tmp_path: Path, rows: list[tuple[int, int, float, int]]) -> Path:
    path = tmp_path / "ratings.csv"
    path.write_text(
        "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in rows)
    )
    return path


def _pairs(part: Interactions, data: Dataset) -> list[tuple[int, int, float]]:
    """A part as raw (user, item, rating) triples, in the part's order."""
    return list(
        zip(
            data.user_ids[part.users].tolist(),
            data.item_ids[part.items].tolist(),
            part.ratings.tolist(),
            strict=True,
        )
    )


def test_the_config_accepts_exactly_the_split_methods_the_data_layer_has() -> None:
    from typing import get_args

    from mf.config import SplitMethod

    # The config's choices and the data layer's methods are written in two places: they must agree.
    assert get_args(SplitMethod) == SPLIT_METHODS


def test_label_encode_matches_sklearn_label_encoder() -> None:
    from sklearn.preprocessing import LabelEncoder

    raw = np.array([50, 7, 7, 1000, 3, 50, -2])
    enc = label_encode(raw)
    # Index = rank of the sorted unique raw id, exactly like LabelEncoder fit on all rows.
    assert enc.codes.tolist() == LabelEncoder().fit_transform(raw).tolist()
    assert enc.ids.tolist() == [-2, 3, 7, 50, 1000]
    assert enc.codes.dtype == np.int32


@pytest.mark.parametrize(
    "raw",
    [
        np.array([50, 7, 7, 1000, 3, 50, 0]),  # small non-negative ids: the one-pass table
        np.array([5, 2**40, 5, 3]),  # one huge id: the sort
        np.array([-4, 9, 9]),  # a negative id: the sort
    ],
)
def test_label_encode_gives_np_uniques_encoding_on_either_path(raw: np.ndarray) -> None:
    ids, inverse = np.unique(raw, return_inverse=True)
    enc = label_encode(raw)
    # The table and the sort give the same ids and codes (int32 codes, int64 ids).
    assert enc.ids.tolist() == ids.tolist() and enc.codes.tolist() == inverse.tolist()
    assert (enc.ids.dtype, enc.codes.dtype) == (np.int64, np.int32)


def test_sort_by_user_time_on_a_combined_key_matches_two_stable_sorts() -> None:
    rng = np.random.default_rng(3)
    users, times = rng.integers(0, 50, 5000), rng.integers(10**9, 10**9 + 40, 5000)  # many ties
    order = np.argsort(times, kind="stable")
    expected = order[np.argsort(users[order], kind="stable")]
    # One sort of (user << 32 | time) is the same stable order as the two sorts it replaces.
    assert np.array_equal(sort_by_user_time(users, times), expected)
    # A time span past 32 bits falls back to the two sorts.
    wide = times.copy()
    wide[0] = 0
    order = np.argsort(wide, kind="stable")
    assert np.array_equal(sort_by_user_time(users, wide), order[np.argsort(users[order], kind="stable")])


def test_split_random_on_user_grouped_rows_is_the_split_np_unique_gave() -> None:
    rng = np.random.default_rng(5)
    users = np.sort(rng.integers(0, 300, 4000))  # grouped by user, as prepare_dataset has them
    got = split_random(users, val_fraction=0.2, test_fraction=0.1, seed=9)
    # The rule as it was first written (np.unique over the shuffled users), for the same seed.
    perm = np.random.default_rng(9).permutation(len(users))
    _, first = np.unique(users[perm], return_index=True)
    kept = np.zeros(len(users), dtype=bool)
    kept[perm[first]] = True
    pool = perm[~kept[perm]]
    n_val, n_test = round(0.2 * len(users)), round(0.1 * len(users))
    # The one-pass rule for grouped rows picks the same rows: the split is unchanged.
    assert np.array_equal(got.val, np.sort(pool[:n_val]))
    assert np.array_equal(got.test, np.sort(pool[n_val : n_val + n_test]))


def test_sort_by_user_time_keeps_file_order_for_ties() -> None:
    users = np.array([1, 0, 1, 0, 1])
    times = np.array([5, 9, 5, 1, 2])
    # User 0: t=1 then t=9; user 1: t=2, then the two t=5 rows in file order (0 before 2).
    assert sort_by_user_time(users, times).tolist() == [3, 1, 4, 0, 2]


def test_split_last_n_holds_out_latest_per_user() -> None:
    users = np.array([0] * 4 + [1] * 2 + [2] * 3)
    parts = split_last_n(users, val_n=1, test_n=1)
    # Users with >= 3 ratings give their last to test and the one before to val; user 1 has only 2.
    assert parts.test is not None and parts.test.tolist() == [3, 8]
    assert parts.val.tolist() == [2, 7]
    assert parts.train.tolist() == [0, 1, 4, 5, 6]


def test_split_last_n_test_is_none_without_test_n() -> None:
    parts = split_last_n(np.zeros(6, dtype=np.int64), val_n=2, test_n=0)
    # No test part was asked for.
    assert parts.test is None and parts.val.tolist() == [4, 5]


def test_prepare_dataset_last_n_on_real_ml_latest_small_matches_tutorial() -> None:
    data = prepare_dataset(SMALL_DIR, val_n=5)
    # The tutorial's numbers: 610 users x 5 latest ratings held out.
    assert len(data.val) == 3_050
    assert len(data.train) == 97_786
    assert data.test is None
    assert (data.n_users, data.n_items) == (610, 9_724)
    assert data.rating_scale == (0.5, 5.0)

    # The same split rebuilt the tutorial's way: LabelEncoder, stable sort, groupby().tail(5).
    from sklearn.preprocessing import LabelEncoder

    df = pd.read_csv(SMALL_DIR / "ratings.csv")
    df["u"] = LabelEncoder().fit_transform(df["userId"])
    df["i"] = LabelEncoder().fit_transform(df["movieId"])
    df = df.sort_values(["u", "timestamp"], kind="stable")
    val = df.groupby("u").tail(5)
    train = df.drop(val.index)
    assert data.val.users.tolist() == val["u"].tolist()
    assert data.val.items.tolist() == val["i"].tolist()
    assert data.train.items.tolist() == train["i"].tolist()
    assert np.array_equal(data.train.ratings, train["rating"].to_numpy(np.float32))


def test_prepare_dataset_last_n_with_test_part(tmp_path: Path) -> None:
    rows = [(9, 100 + k, 3.0, 1000 - k) for k in range(5)] + [(4, 100, 2.0, 1), (4, 101, 1.0, 2)]
    data = prepare_dataset(_ratings_file(tmp_path, rows), val_n=2, test_n=1)
    # User 9's latest (smallest k = largest timestamp) is test, the two before it val.
    assert data.test is not None and _pairs(data.test, data) == [(9, 100, 3.0)]
    assert _pairs(data.val, data) == [(9, 102, 3.0), (9, 101, 3.0)]
    # User 4 has 2 < val_n + test_n + 1 ratings and stays wholly in training.
    assert {u for u, _, _ in _pairs(data.train, data)} == {4, 9}
    assert len(data.train) == 4


def test_prepare_dataset_encodes_items_seen_only_in_validation(tmp_path: Path) -> None:
    rows = [(1, 10, 4.0, 1), (1, 99, 5.0, 2)]
    data = prepare_dataset(_ratings_file(tmp_path, rows), val_n=1)
    # Item 99 appears only in val, yet it has an index because encoding covers all ratings.
    assert data.item_index(99) == 1
    assert data.val.items.tolist() == [1]


def test_split_random_is_seeded_and_sized() -> None:
    users = np.repeat(np.arange(100), 10)
    a = split_random(users, val_fraction=0.1, test_fraction=0.2, seed=3)
    b = split_random(users, val_fraction=0.1, test_fraction=0.2, seed=3)
    c = split_random(users, val_fraction=0.1, test_fraction=0.2, seed=4)
    # Same seed, same split; another seed, another split.
    assert a.val.tolist() == b.val.tolist() and a.test is not None and b.test is not None
    assert a.test.tolist() == b.test.tolist()
    assert a.val.tolist() != c.val.tolist()
    # Sizes are round(fraction * rows), and the parts partition the rows.
    assert (len(a.val), len(a.test), len(a.train)) == (100, 200, 700)
    assert sorted(np.concatenate([a.train, a.val, a.test]).tolist()) == list(range(1000))


def test_split_random_keeps_a_training_rating_for_every_user() -> None:
    users = np.array([0, 1, 1, 2, 2, 2, 3])
    for seed in range(20):
        parts = split_random(users, val_fraction=0.4, test_fraction=0.3, seed=seed)
        held = np.concatenate([parts.val, parts.test if parts.test is not None else []]).astype(int)
        # Every user held out also trains; single-rating users 0 and 3 never leave training.
        assert set(users[held]) <= set(users[parts.train])
        assert {0, 6} <= set(parts.train.tolist())


def test_prepare_dataset_random_split(tmp_path: Path) -> None:
    rows = [(u, i, 3.0, u * 100 + i) for u in range(1, 21) for i in range(1, 11)]
    data = prepare_dataset(_ratings_file(tmp_path, rows), split="random", val_fraction=0.2, seed=7)
    again = prepare_dataset(_ratings_file(tmp_path, rows), split="random", val_fraction=0.2, seed=7)
    # 20% of 200 rows to val, no test part, reproducible by seed.
    assert (len(data.train), len(data.val), data.test) == (160, 40, None)
    assert _pairs(data.val, data) == _pairs(again.val, again)


def test_dataset_index_lookup_and_unknown_ids(tmp_path: Path) -> None:
    data = prepare_dataset(
        _ratings_file(tmp_path, [(5, 30, 4.0, 1), (8, 20, 3.0, 1), (8, 30, 2.0, 2)]), val_n=1
    )
    # Indices follow sorted raw ids, both ways.
    assert (data.user_index(8), data.item_index(20)) == (1, 0)
    assert data.user_ids[data.user_index(5)] == 5
    # Unknown ids raise DataError naming the id, not KeyError.
    with pytest.raises(DataError, match="user id 6"):
        data.user_index(6)
    with pytest.raises(DataError, match="item id 99"):
        data.item_index(99)


def test_dataset_pickles_and_has_typed_arrays() -> None:
    data = prepare_dataset(SMALL_DIR)
    clone = pickle.loads(pickle.dumps(data))
    # It survives a trip through pickle (as through Ray's object store) with its dtypes.
    assert np.array_equal(clone.train.users, data.train.users)
    assert clone.train.users.dtype == np.int32 and clone.train.items.dtype == np.int32
    assert clone.train.ratings.dtype == np.float32
    assert clone.titles == data.titles
    # Indices are contiguous and within range.
    assert data.train.users.max() < data.n_users and data.val.items.max() < data.n_items


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"split": "temporal"}, "split: 'temporal'"),
        ({"val_n": -1}, "val_n: -1"),
        ({"test_n": 1.5}, "test_n: 1.5"),
        ({"val_fraction": 1.0}, "val_fraction: 1.0"),
        ({"test_fraction": -0.1}, "test_fraction: -0.1"),
        ({"val_fraction": 0.6, "test_fraction": 0.4}, "val_fraction \\+ test_fraction"),
        ({"seed": None}, "seed: None"),
    ],
)
def test_prepare_dataset_rejects_bad_split_arguments(kwargs: dict[str, object], named: str) -> None:
    # Checked before any file is read: the path need not exist, and the message names the argument.
    with pytest.raises(ConfigError, match=named) as info:
        prepare_dataset("/nonexistent/ratings.csv", **kwargs)  # type: ignore[arg-type]
    assert "expected" in str(info.value) and "\n" not in str(info.value)
