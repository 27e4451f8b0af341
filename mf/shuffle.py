"""`permutation(n, seed)`: a uniformly random permutation of range(n), as int32, drawn in parallel (CPU, numba).

Why: the trainer draws one permutation of the training ratings per pass (mf.training), and
`torch.randperm`'s Fisher-Yates swaps at random across the whole array: on arrays far larger than
the caches nearly every swap waits on memory, and its share of an epoch grows with the data.
This is Rao and Sandelius' two-pass shuffle: each index goes to one of B buckets at random (a counting
sort, in parallel over fixed blocks of the input), then each bucket, small enough for the caches, is
shuffled by Fisher-Yates. A uniform choice of bucket and a uniform shuffle of each bucket give a
uniform permutation of the whole.

The random numbers are splitmix64 of (seed, index), a counter-based generator, so the result depends
on the seed alone, not on the number of threads. Drawing a position below i + 1 takes the high bits
of the product (Lemire's method without its rejection step): each position's probability is off
from uniform by a relative (i + 1) / 2**32 at most, below 2**-16 for buckets of BUCKET_SIZE.
"""

from __future__ import annotations

import numpy as np

try:
    import numba

    from mf.numba_threads import use_torch_threads
except ImportError:  # torch.randperm serves
    numba = None

BUCKET_SIZE = 1 << 15
"""About how many indices a bucket holds (128 KB of int32: an L2 cache's share)."""
_GOLDEN = 0x9E3779B97F4A7C15  # splitmix64's increment
_BLOCKS = 64  # fixed blocks of the counting sort: as many as threads could use, independent of them


def available() -> bool:
    """Whether `permutation` can run here (numba installed)."""
    return numba is not None


def permutation(n: int, seed: int) -> np.ndarray:
    """A uniformly random permutation of range(n) as int32, the same for the same (n, seed).

    Needs numba (`available()`); it runs on as many threads as torch has.

    Args:
        n: the length, 0 <= n < 2**31.
        seed: any integer (taken modulo 2**64).

    Raises:
        ValueError: where n is out of that range.
        RuntimeError: where numba is not installed.
    """
    if numba is None:
        raise RuntimeError(
            "mf.shuffle.permutation needs numba (see available()); torch.randperm serves without it"
        )
    if not 0 <= n < 2**31:
        raise ValueError(f"permutation: n={n}; expected 0 <= n < 2**31 (int32 positions)")
    log2_buckets = max(0, int(np.ceil(np.log2(max(1, n) / BUCKET_SIZE))))
    out = np.empty(n, dtype=np.int32)
    use_torch_threads()
    _permutation(out, np.uint64(seed % 2**64), log2_buckets)
    return out


def _mix_py(z):  # pragma: no cover - compiled by numba below
    """splitmix64's output function: a 64-bit value to a well-mixed one."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _bucket_py(base, i, shift, log2_buckets):  # pragma: no cover - compiled by numba below
    """Index i's bucket: the top log2_buckets bits of its random number (0 with one bucket)."""
    if log2_buckets == 0:
        return np.uint64(0)
    return _mix(base + np.uint64(i) * np.uint64(_GOLDEN)) >> shift


def _permutation_py(out, seed, log2_buckets):  # pragma: no cover - compiled by numba below
    n = out.shape[0]
    n_buckets = 1 << log2_buckets
    golden = np.uint64(_GOLDEN)
    base = _mix(seed)
    shift = np.uint64(64 - log2_buckets) if log2_buckets > 0 else np.uint64(0)
    block = (n + _BLOCKS - 1) // _BLOCKS
    counts = np.zeros((_BLOCKS, n_buckets), dtype=np.int64)
    # 1. Count each block's indices per bucket.
    for b in numba.prange(_BLOCKS):
        for i in range(b * block, min(n, (b + 1) * block)):
            bucket = _bucket(base, i, shift, log2_buckets)
            counts[b, bucket] += 1
    # 2. Where each (block, bucket) writes: buckets in order, blocks in order within a bucket.
    starts = np.empty((_BLOCKS, n_buckets), dtype=np.int64)
    bucket_start = np.empty(n_buckets + 1, dtype=np.int64)
    at = 0
    for bucket in range(n_buckets):
        bucket_start[bucket] = at
        for b in range(_BLOCKS):
            starts[b, bucket] = at
            at += counts[b, bucket]
    bucket_start[n_buckets] = at
    # 3. Scatter, recomputing each index's bucket (cheaper than storing it).
    for b in numba.prange(_BLOCKS):
        for i in range(b * block, min(n, (b + 1) * block)):
            bucket = _bucket(base, i, shift, log2_buckets)
            out[starts[b, bucket]] = i
            starts[b, bucket] += 1
    # 4. Fisher-Yates within each bucket, from a stream of its own.
    mask32 = np.uint64(0xFFFFFFFF)
    for bucket in numba.prange(n_buckets):
        lo = bucket_start[bucket]
        state = _mix(base ^ _mix(np.uint64(bucket) + golden))
        for top in range(bucket_start[bucket + 1] - lo - 1, 0, -1):
            state += golden
            high = (_mix(state) >> np.uint64(32)) & mask32
            j = np.int64((high * np.uint64(top + 1)) >> np.uint64(32))
            a, c = out[lo + top], out[lo + j]
            out[lo + top], out[lo + j] = c, a


if numba is not None:
    _mix = numba.njit(cache=True, nogil=True, inline="always")(_mix_py)
    _bucket = numba.njit(cache=True, nogil=True, inline="always")(_bucket_py)
    _permutation = numba.njit(cache=True, nogil=True, parallel=True)(_permutation_py)
