"""Label encoding of raw ids into contiguous indices, the way the tutorial's LabelEncoder does it.

Why over all ratings: fitting on the whole file (not only the training part) gives every item an
index, including items seen only in validation, so a model can be evaluated on them at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)  # arrays: compare by identity, not element-wise
class Encoding:
    """`ids[index]` is the raw id; `codes` is the index of each input row (rank of its sorted raw id)."""

    ids: np.ndarray  # sorted unique raw ids, int64
    codes: np.ndarray  # int64, one per input row


def label_encode(raw: np.ndarray) -> Encoding:
    """Same result as sklearn's LabelEncoder().fit_transform: index = rank among sorted unique ids."""
    ids, codes = np.unique(np.asarray(raw, dtype=np.int64), return_inverse=True)
    return Encoding(ids=ids, codes=codes.astype(np.int64, copy=False).reshape(-1))


def lookup(ids: np.ndarray, raw_id: int) -> int | None:
    """Index of `raw_id` in sorted `ids` by binary search (no dict to pickle), or None if absent."""
    i = int(np.searchsorted(ids, raw_id))
    return i if i < len(ids) and int(ids[i]) == raw_id else None
