"""Hold out validation (and test) ratings: each user's latest ones, a seeded random share, or the
latest ratings of the whole file.

Why per user and by time for `last-n`: it is what the tutorial does and what a recommender faces,
predicting a user's next ratings from their earlier ones. Why a global cut for `time`: it is how a
production recommender is judged, trained on everything before a date and scored on what came
after. Rows are ordered by user, then timestamp, with a stable sort so ties keep file order and the
split is exactly reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np

from mf.errors import ConfigError

SPLIT_METHODS = ("last-n", "random", "time")


@dataclass(frozen=True, eq=False)  # arrays: compare by identity, not element-wise
class SplitIndex:
    """Row positions (ascending) of each part; `test` is None when no test part was asked for."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray | None


def check_split_args(
    split: str, *, val_n: int, test_n: int, val_fraction: float, test_fraction: float, seed: int
) -> None:
    """Reject bad split arguments up front, before the data is loaded, naming argument, value, rule.

    Raises:
        ConfigError: where `split` is not one of SPLIT_METHODS, val_n, test_n or seed is not an
            integer >= 0, a fraction is not a number in [0, 1), or the two fractions add up to 1
            or more.
    """
    if not isinstance(split, str) or split not in SPLIT_METHODS:
        raise ConfigError(
            f"split: {split!r} is not a split method; expected one of {', '.join(SPLIT_METHODS)}"
        )
    for name, value in (("val_n", val_n), ("test_n", test_n), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 0:
            raise ConfigError(f"{name}: {value!r} is not allowed; expected an integer >= 0")
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, Real) or not 0.0 <= value < 1.0:
            raise ConfigError(f"{name}: {value!r} is not allowed; expected a number in [0, 1)")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(
            f"val_fraction + test_fraction: {val_fraction!r} + {test_fraction!r} >= 1; "
            "expected a sum below 1 so that some ratings remain for training"
        )


def sort_by_user_time(users: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """Order of rows by user, then timestamp; stable, so equal timestamps keep file order.

    One stable sort of a combined key (user code in the high 32 bits, time since the first rating
    in the low 32) where both fit, which is every MovieLens set, instead of two sorts.

    Args:
        users: user codes (N,), one per row.
        timestamps: the rows' timestamps (N,).

    Returns:
        int64 row positions (N,) in that order.
    """
    if len(users) == 0:
        return np.zeros(0, dtype=np.int64)
    start = int(timestamps.min())
    if int(users.min()) >= 0 and int(users.max()) < 2**31 and int(timestamps.max()) - start < 2**32:
        key = (users.astype(np.int64) << 32) | (timestamps.astype(np.int64) - start)
        return np.argsort(key, kind="stable")
    order = np.argsort(timestamps, kind="stable")
    return order[np.argsort(users[order], kind="stable")]


def _runs(users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of user-grouped `users`: its position within its user's run, and that run's length."""
    n = len(users)
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if n else np.zeros(0, np.int64)
    lengths = np.diff(np.r_[starts, n])
    position = np.arange(n) - np.repeat(starts, lengths)
    return position, np.repeat(lengths, lengths)


def split_last_n(users: np.ndarray, *, val_n: int, test_n: int) -> SplitIndex:
    """On rows sorted by user then time: each user's last `test_n` are test, the `val_n` before them val.

    Users with fewer than val_n + test_n + 1 ratings stay wholly in training, so every held-out
    user keeps at least one training rating.

    Args:
        users: each row's user code (N,), rows grouped by user and in time order within a user.
        val_n: ratings per user for validation.
        test_n: ratings per user for test (0: no test part, `test` is None).
    """
    position, length = _runs(users)
    from_end = length - position - 1  # 0 for a user's latest rating
    held = length >= val_n + test_n + 1
    test = held & (from_end < test_n)
    val = held & (from_end >= test_n) & (from_end < test_n + val_n)
    return SplitIndex(
        train=np.flatnonzero(~(test | val)),
        val=np.flatnonzero(val),
        test=np.flatnonzero(test) if test_n > 0 else None,
    )


def _first_rows(users: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """The row of each user that comes first in the order `perm`.

    On user-grouped rows (as prepare_dataset has them) that is the row of least rank in `perm`
    within each run of a user, found in one pass; otherwise by np.unique, which sorts.
    """
    if len(users) and bool(np.all(users[1:] >= users[:-1])):
        rank = np.empty(len(perm), dtype=np.int64)
        rank[perm] = np.arange(len(perm))
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
        return perm[np.minimum.reduceat(rank, starts)]
    _, first = np.unique(users[perm], return_index=True)
    return perm[first]


def split_random(users: np.ndarray, *, val_fraction: float, test_fraction: float, seed: int) -> SplitIndex:
    """A seeded random share of rows to val and test, the same for the same seed and data.

    One rating of each user, chosen at random, is kept for training, so every user in val or test
    also has a training rating, and users with a single rating stay in training. Part sizes are
    round(fraction * rows); if those kept ratings leave too few candidates, val and test are smaller.

    Args:
        users: each row's user code (N,).
        val_fraction: share of the rows for validation.
        test_fraction: share of the rows for test (0: no test part, `test` is None).
        seed: seeds the choice.
    """
    n = len(users)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    kept = np.zeros(n, dtype=bool)
    kept[_first_rows(users, perm)] = True  # each user's first row in random order
    pool = perm[~kept[perm]]
    n_val = min(round(val_fraction * n), len(pool))
    n_test = min(round(test_fraction * n), len(pool) - n_val)
    val, test = np.sort(pool[:n_val]), np.sort(pool[n_val : n_val + n_test])
    train = np.ones(n, dtype=bool)
    train[val] = False
    train[test] = False
    return SplitIndex(
        train=np.flatnonzero(train),
        val=val,
        test=test if test_fraction > 0 else None,
    )


def split_time(timestamps: np.ndarray, *, val_fraction: float, test_fraction: float) -> SplitIndex:
    """The latest ratings of the whole file: the last round(test_fraction * rows) by timestamp are
    test, the round(val_fraction * rows) before them val, the rest train.

    The order is a stable sort of the timestamps over rows sorted by user (as prepare_dataset has
    them), so ratings of the same second are cut by user id, and the cut is exactly reproducible.
    Held-out users and items need not have a training rating here (prepare_dataset leaves such
    ratings out and counts them).

    Args:
        timestamps: each row's timestamp (N,).
        val_fraction: share of the rows for validation.
        test_fraction: share of the rows for test (0: no test part, `test` is None).
    """
    n = len(timestamps)
    order = np.argsort(timestamps, kind="stable")
    n_test = round(test_fraction * n)
    n_val = min(round(val_fraction * n), n - n_test)
    test = np.sort(order[n - n_test :])
    val = np.sort(order[n - n_test - n_val : n - n_test])
    train = np.sort(order[: n - n_test - n_val])
    return SplitIndex(train=train, val=val, test=test if test_fraction > 0 else None)
