"""The Optuna study's storage calls, run one at a time, in order, on a thread of their own.

Tune's driver is one event loop: while it waits on SQLite (a report ~0.5 ms, a tell ~5 ms, a TPE
ask 20-30 ms with ~1,000 trials in the study), no trial gets its next `train` call, and each
worker stands still in `tune.report`. py-spy on the driver of a 2-trial run on 2 cores: the
study's calls were 27 % of the loop's time, and the workers spent a quarter of theirs waiting.
Sent here, they run while the loop goes on; they keep their order, so Optuna sees what it
would have seen, and an error in one is raised in the driver at the next call or `flush`.
The thread still shares the driver's GIL with the loop, so it shortens the waits more than it
frees the driver: measured, 3 % more epochs a second (bench/README.md).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class StudyCalls:
    """A queue of study calls that one background thread runs in the order they were sent."""

    def __init__(self) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="optuna-study")
        self._sent: deque[Future[Any]] = deque()

    def send(self, call: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Queue `call(*args, **kwargs)`; first raise the error of any earlier call that failed."""
        while self._sent and self._sent[0].done():
            self._sent.popleft().result()
        future = self._thread.submit(call, *args, **kwargs)
        self._sent.append(future)
        return future

    def flush(self) -> None:
        """Wait until every call sent so far has run (raising the first error), e.g. before the
        study is read elsewhere or the searcher is saved."""
        while self._sent:
            self._sent.popleft().result()
