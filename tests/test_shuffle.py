"""mf.shuffle: the permutation each training pass is drawn from."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mf import shuffle

pytestmark = pytest.mark.skipif(not shuffle.available(), reason="numba is not installed")


@pytest.mark.parametrize("n", [0, 1, 2, 7, 1000, 3 * shuffle.BUCKET_SIZE + 5])
def test_a_permutation_holds_every_position_once(n: int):
    order = shuffle.permutation(n, seed=3)
    assert order.dtype == np.int32
    assert np.array_equal(np.sort(order), np.arange(n))


def test_the_same_seed_draws_the_same_order_whatever_the_threads():
    n = 4 * shuffle.BUCKET_SIZE
    with_two = shuffle.permutation(n, seed=11)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with_one = shuffle.permutation(n, seed=11)
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(with_one, with_two)
    assert not np.array_equal(with_two, shuffle.permutation(n, seed=12))


@pytest.mark.parametrize("bucket_size", [1 << 15, 2])  # one bucket; eight buckets
def test_every_element_is_equally_likely_at_every_position(monkeypatch, bucket_size: int):
    monkeypatch.setattr(shuffle, "BUCKET_SIZE", bucket_size)
    n, draws = 12, 12_000
    counts = np.zeros((n, n))
    for seed in range(draws):
        counts[shuffle.permutation(n, seed), np.arange(n)] += 1
    # Pearson's chi-square over the n x n cells, (n - 1)**2 = 121 degrees of freedom: its 0.9999
    # quantile is about 195, so a uniform shuffle fails this once in ten thousand runs.
    expected = draws / n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 195, chi2


def test_neighbours_are_not_kept_together():
    # A bucketed shuffle that forgot to shuffle within buckets, or to mix the buckets, keeps
    # runs of consecutive indices; a uniform one leaves about two adjacent pairs in all.
    order = shuffle.permutation(10 * shuffle.BUCKET_SIZE, seed=5).astype(np.int64)
    adjacent = int((np.abs(np.diff(order)) == 1).sum())
    assert adjacent < 10


def test_a_size_past_int32_is_refused():
    with pytest.raises(ValueError, match="int32"):
        shuffle.permutation(2**31, seed=0)
