"""`use_torch_threads()`: numba's parallel loops run on as many threads as torch has.

torch's thread count is a Ray trial's CPUs (`TrainConfig.threads`, or Ray's OMP_NUM_THREADS), while
numba's own default is every core of the machine: left alone, a compiled loop (mf.fused_step,
mf.shuffle) in each of several trials would oversubscribe the cores. The setting is the calling
thread's, and trials train on threads of their own, so it is set at every call.
"""

from __future__ import annotations

import numba
import torch


def use_torch_threads() -> None:
    """Set numba's thread count for this thread to torch's (at most numba's pool size)."""
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
