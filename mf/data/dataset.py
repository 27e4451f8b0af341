"""The trainer's view of the data: encoded, split, small and picklable.

Why a frozen dataclass of numpy arrays: it is built once by the driver and shipped to every Ray
worker through the object store, so it must pickle cheaply and carry no open files or dicts of ids.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from mf.data.encode import label_encode, lookup
from mf.data.formats import load_movielens
from mf.data.split import check_split_args, sort_by_user_time, split_last_n, split_random
from mf.errors import DataError


@dataclass(frozen=True, eq=False)  # arrays: compare by identity, not element-wise
class Interactions:
    """One part of a split: parallel arrays of user index, item index and rating."""

    users: np.ndarray  # int32 in [0, n_users) (int64 past 2**31 users)
    items: np.ndarray  # int32 in [0, n_items)
    ratings: np.ndarray  # float32

    def __len__(self) -> int:
        return len(self.ratings)


@dataclass(frozen=True, eq=False)  # arrays: compare by identity, not element-wise
class Dataset:
    """Everything a trainer needs; `user_ids[i]` / `item_ids[j]` give back the raw MovieLens ids."""

    train: Interactions
    val: Interactions
    test: Interactions | None  # None when no test part was held out
    user_ids: np.ndarray  # int64, sorted: the label encoding
    item_ids: np.ndarray  # int64, sorted
    titles: dict[int, str] | None
    rating_scale: tuple[float, float]  # (min, max) rating in the data
    source: str

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

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


def prepare_dataset(
    source: str | os.PathLike[str],
    *,
    split: str = "last-n",
    val_n: int = 5,
    test_n: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.0,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Dataset:
    """Load, label-encode over all ratings, sort by user then time (stable), and split.

    `last-n` uses val_n / test_n per user; `random` uses val_fraction / test_fraction and seed.
    Arguments are checked before any file is read (ConfigError); bad data raises DataError.
    """
    check_split_args(
        split, val_n=val_n, test_n=test_n, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed
    )
    ratings = load_movielens(source, cache_dir=cache_dir)
    frame, titles, label = ratings.frame, ratings.titles, ratings.source
    del ratings  # from here on each column is dropped once it is used: bounded memory on big sets
    users, items = label_encode(frame["user"].to_numpy()), label_encode(frame["item"].to_numpy())
    rating, timestamp = frame["rating"].to_numpy(), frame["timestamp"].to_numpy()
    del frame
    scale = (float(rating.min()), float(rating.max()))

    order = sort_by_user_time(users.codes, timestamp)
    del timestamp
    u, i, r = users.codes[order], items.codes[order], rating[order]
    user_ids, item_ids = users.ids, items.ids
    del order, rating, users, items
    if split == "last-n":
        parts = split_last_n(u, val_n=val_n, test_n=test_n)
    else:
        parts = split_random(u, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)

    def part(rows: np.ndarray) -> Interactions:
        return Interactions(users=u[rows], items=i[rows], ratings=r[rows])

    return Dataset(
        train=part(parts.train),
        val=part(parts.val),
        test=part(parts.test) if parts.test is not None else None,
        user_ids=user_ids,
        item_ids=item_ids,
        titles=titles,
        rating_scale=scale,
        source=label,
    )
