"""The trainer's view of the data: encoded, split, small and picklable.

Why a frozen dataclass of numpy arrays: it is built once by the driver and shipped to every Ray
worker through the object store, so it must pickle cheaply and carry no open files or dicts of ids.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

import numpy as np

from mf.data.encode import label_encode, lookup, lookup_many
from mf.data.formats import load_movielens
from mf.data.split import check_split_args, sort_by_user_time, split_last_n, split_random, split_time
from mf.errors import ConfigError, DataError


@dataclass(frozen=True, eq=False)  # arrays: compare by identity, not element-wise
class Interactions:
    """One part of a split: parallel arrays of user index, item index and rating."""

    users: np.ndarray  # int32 in [0, n_users) (int64 past 2**31 users)
    items: np.ndarray  # int32 in [0, n_items)
    ratings: np.ndarray  # float32

    def __len__(self) -> int:
        return len(self.ratings)


PARTS = ("train", "val", "test")
TRAIN_ON = {"train": ("train",), "train+val": ("train", "val"), "all": ("train", "val", "test")}
"""What a model may train on (TrainConfig.train_on): the split's parts that become its training part."""


@dataclass(frozen=True, eq=False)  # arrays: compare by identity, not element-wise
class Dataset:
    """Everything a trainer needs; `user_ids[i]` / `item_ids[j]` give back the raw MovieLens ids.

    `train` is every rating the model trains on: the split's training part, or with `trained_on`
    several parts merged (a refit after selection). `val` and `test` are the held-out parts; None
    where there is none (no test part asked for) or where the model trains on it.
    """

    train: Interactions
    val: Interactions | None
    test: Interactions | None
    user_ids: np.ndarray  # int64, sorted: the label encoding
    item_ids: np.ndarray  # int64, sorted
    titles: dict[int, str] | None
    rating_scale: tuple[float, float]  # (min, max) rating in the data
    source: str
    trained_on: tuple[str, ...] = ("train",)
    """The split's parts that `train` holds, in PARTS order."""
    unseen: dict[str, int] = field(default_factory=dict)
    """Per held-out part ("val", "test") where the rule applies (a time split, a part given as its
    own file): ratings left out of it because the training part has no rating of their user or
    item, so the model knows nothing of them."""
    left_out: Interactions | None = None
    """The held-out ratings a time split left out (their user or item has no training rating): not
    judged, but rated by their users all the same (`all_rated`)."""

    @property
    def n_users(self) -> int:
        """Users in the data (all parts): user indices run 0..n_users-1."""
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        """Items in the data (all parts): item indices run 0..n_items-1."""
        return len(self.item_ids)

    def held_out(self, part: str) -> Interactions:
        """The held-out `part` ("val" or "test"); DataError saying why where there is none."""
        found = {"val": self.val, "test": self.test}.get(part)
        if found is not None:
            return found
        if part in self.trained_on:
            raise DataError(
                f"part {part!r}: this model trained on it ({'+'.join(self.trained_on)}), so it is not "
                "held out; judge a model trained on train only"
            )
        raise DataError(
            f"no {part!r} part held out in this split (hold one out with test_n / test_fraction / "
            "test_data, or use val)"
        )

    def all_rated(self) -> Interactions:
        """Every rating the data holds (all parts): what a user has rated at all."""
        return merge([p for p in (self.train, self.val, self.test, self.left_out) if p is not None])

    def training_on(self, train_on: str) -> Dataset:
        """This data set with the parts `train_on` names (a key of TRAIN_ON) merged into its training
        part: what `prepare_dataset(..., train_on=train_on)` builds, without reading the files again.
        Returns `self` where it already trains on those parts.

        Raises:
            ConfigError: where `train_on` is not a key of TRAIN_ON, or this data set already has
                other parts merged into its training part.
        """
        if train_on not in TRAIN_ON:
            raise ConfigError(f"train_on: {train_on!r} is not one of {', '.join(map(repr, TRAIN_ON))}")
        parts = TRAIN_ON[train_on]
        if parts == self.trained_on:
            return self
        if self.trained_on != TRAIN_ON["train"]:
            raise ConfigError(
                f"train_on: {train_on!r} from data that already trains on {'+'.join(self.trained_on)}; "
                "start from the split's training part"
            )
        held = {"val": self.val, "test": self.test}
        return replace(
            self,
            train=merge([self.train, *(held[p] for p in parts[1:] if held[p] is not None)]),
            val=None if "val" in parts else self.val,
            test=None if "test" in parts else self.test,
            trained_on=parts,
        )

    def user_index(self, raw_user_id: int) -> int:
        """Index of a raw user id; DataError (not KeyError) so a CLI can print it as a message."""
        index = lookup(self.user_ids, raw_user_id)
        if index is None:
            raise DataError(
                f"user id {raw_user_id}: not in {self.source}; expected one of its {self.n_users} users"
            )
        return index

    def item_index(self, raw_item_id: int) -> int:
        """Index of a raw item (movie) id; DataError naming the id when it is not in the data."""
        index = lookup(self.item_ids, raw_item_id)
        if index is None:
            raise DataError(
                f"item id {raw_item_id}: not in {self.source}; expected one of its {self.n_items} items"
            )
        return index


def merge(parts: list[Interactions]) -> Interactions:
    """Several parts as one, grouped by user (a stable sort: each user's rows keep the parts' order)."""
    if len(parts) == 1:
        return parts[0]
    users = np.concatenate([p.users for p in parts])
    order = np.argsort(users, kind="stable")
    return Interactions(
        users=users[order],
        items=np.concatenate([p.items for p in parts])[order],
        ratings=np.concatenate([p.ratings for p in parts])[order],
    )


def prepare_dataset(
    source: str | os.PathLike[str],
    *,
    split: str = "last-n",
    val_n: int = 5,
    test_n: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.0,
    seed: int = 0,
    val_data: str | os.PathLike[str] | None = None,
    test_data: str | os.PathLike[str] | None = None,
    train_on: str = "train",
    cache_dir: str | os.PathLike[str] | None = None,
) -> Dataset:
    """Load, label-encode over all ratings, sort by user then time (stable), and split.

    `last-n` uses val_n / test_n per user; `random` uses val_fraction / test_fraction and seed;
    `time` holds out the latest val_fraction / test_fraction of the whole file. `val_data` /
    `test_data` name files (any form `source` takes) that are the validation / test part instead:
    `source` is then split into the other parts only, their ids are mapped through `source`'s, and
    ratings of users or items `source` lacks are left out and counted (`Dataset.unseen`), as are a
    time split's held-out ratings whose user or item has no training rating. `train_on` (a key of
    TRAIN_ON) merges held-out parts into the training part.

    Arguments are checked before any file is read (ConfigError); bad data raises DataError.

    Args:
        source: the ratings: a folder, a zip, a ratings file or a data set name (`load_movielens`).
        split: `last-n`, `random` or `time` (SPLIT_METHODS).
        val_n: last-n: ratings per user held out for validation.
        test_n: last-n: ratings per user held out as test, after the val ones (0: no test part).
        val_fraction: random, time: fraction of the ratings for validation.
        test_fraction: random, time: fraction of the ratings for test (0: no test part).
        seed: seeds the random split.
        val_data: a ratings file that is the validation part, or None.
        test_data: a ratings file that is the test part, or None (test_n and test_fraction must
            then be 0).
        train_on: `train`, `train+val` or `all`: the parts the training part holds.
        cache_dir: where named data sets are cached (None: `data_home()`'s default).

    Returns:
        The encoded, split Dataset.

    Raises:
        ConfigError: for a bad split argument or train_on, or test_data with a test_n or
            test_fraction above 0.
        DataError: where `source`, `val_data` or `test_data` cannot be found, fetched or read as
            MovieLens ratings.
    """
    check_split_args(
        split, val_n=val_n, test_n=test_n, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed
    )
    if train_on not in TRAIN_ON:
        raise ConfigError(f"train_on: {train_on!r} is not one of {', '.join(map(repr, TRAIN_ON))}")
    if test_data is not None and (test_n > 0 or test_fraction > 0):
        raise ConfigError(
            f"test_data: {os.fspath(test_data)!r} is the test part, so test_n / test_fraction must be 0 "
            f"(got {test_n} / {test_fraction}); drop one of them"
        )
    ratings = load_movielens(source, cache_dir=cache_dir)
    frame, titles, label = ratings.frame, ratings.titles, ratings.source
    del ratings  # from here on each column is dropped once it is used: bounded memory on big sets
    users, items = label_encode(frame["user"].to_numpy()), label_encode(frame["item"].to_numpy())
    rating, timestamp = frame["rating"].to_numpy(), frame["timestamp"].to_numpy()
    del frame
    scale = (float(rating.min()), float(rating.max()))

    order = sort_by_user_time(users.codes, timestamp)
    u, i, r = users.codes[order], items.codes[order], rating[order]
    user_ids, item_ids = users.ids, items.ids
    del users, items, rating
    # A part given as a file of its own is not split from `source` (its size here is 0).
    val_n, val_fraction = (0, 0.0) if val_data is not None else (val_n, val_fraction)
    if split == "last-n":
        parts = split_last_n(u, val_n=val_n, test_n=test_n)
    elif split == "random":
        parts = split_random(u, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    else:
        parts = split_time(timestamp[order], val_fraction=val_fraction, test_fraction=test_fraction)
    del order, timestamp

    def part(rows: np.ndarray) -> Interactions:
        return Interactions(users=u[rows], items=i[rows], ratings=r[rows])

    train = part(parts.train)
    held: dict[str, Interactions | None] = {"val": part(parts.val), "test": None}
    if parts.test is not None:
        held["test"] = part(parts.test)
    unseen: dict[str, int] = {}
    left_out: list[Interactions] = []
    if split == "time":
        for name, p in held.items():
            if p is not None:
                held[name], dropped = _known_only(p, train)
                unseen[name] = len(dropped)
                left_out.append(dropped)
    for name, path in (("val", val_data), ("test", test_data)):
        if path is not None:
            held[name], unseen[name] = _read_part(path, user_ids, item_ids, cache_dir=cache_dir)
    return Dataset(
        train=train,
        val=held["val"],
        test=held["test"],
        user_ids=user_ids,
        item_ids=item_ids,
        titles=titles,
        rating_scale=scale,
        source=label,
        unseen=unseen,
        left_out=merge(left_out) if left_out else None,
    ).training_on(train_on)


def _known_only(part: Interactions, train: Interactions) -> tuple[Interactions, Interactions]:
    """`part` split into the ratings whose user and item have a rating in `train`, and the others."""
    known = np.isin(part.users, train.users) & np.isin(part.items, train.items)

    def rows(mask: np.ndarray) -> Interactions:
        return Interactions(users=part.users[mask], items=part.items[mask], ratings=part.ratings[mask])

    return rows(known), rows(~known)


def _read_part(
    path: str | os.PathLike[str],
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    *,
    cache_dir: str | os.PathLike[str] | None,
) -> tuple[Interactions, int]:
    """A held-out part from a file of its own, its ids mapped through the training data's encoding
    (sorted `user_ids`, `item_ids`), grouped by user then time; and how many of its ratings name a
    user or item the training data lacks (left out)."""
    frame = load_movielens(path, cache_dir=cache_dir).frame
    users, known_users = lookup_many(user_ids, frame["user"].to_numpy())
    items, known_items = lookup_many(item_ids, frame["item"].to_numpy())
    known = known_users & known_items
    users, items = users[known], items[known]
    order = sort_by_user_time(users, frame["timestamp"].to_numpy()[known])
    return (
        Interactions(
            users=users[order].astype(np.int32 if len(user_ids) < 2**31 else np.int64),
            items=items[order].astype(np.int32 if len(item_ids) < 2**31 else np.int64),
            ratings=frame["rating"].to_numpy()[known][order],
        ),
        int((~known).sum()),
    )
