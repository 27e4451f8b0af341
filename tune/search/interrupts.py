"""Ctrl-C and SIGTERM during a run: the first stops the work where it is safe, the second at once.

Ray Tune's own handler takes the first SIGINT during `Tuner.fit()`: it ends the search loop, saves
the experiment's state (the unfinished trials stay unfinished, for `--resume`) and returns. The run
must then skip the confirmation and the export, which is what `Interrupted` carries up to
`tune.run`'s main. Outside `fit()` (the confirmation), a SIGINT is Python's KeyboardInterrupt; the
confirmation cancels its tasks (the runs it finished are saved one by one) and raises Interrupted.
A second SIGINT is a KeyboardInterrupt wherever it lands, and main exits on it without a traceback.

SIGTERM, what `ray job stop` and batch schedulers send, is handled as SIGINT (by default it would
end the driver with nothing saved and nothing said).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

EXIT_CODE = 130
"""What a shell reports for a command ended by Ctrl-C (128 + SIGINT)."""


class Interrupted(Exception):
    """The run was stopped by SIGINT or SIGTERM during `phase` ("the search" or "the confirmation");
    what the experiment folder holds is consistent and can be resumed or exported."""

    def __init__(self, phase: str, folder: Path) -> None:
        self.phase, self.folder = phase, folder
        super().__init__(
            f"interrupted during {phase}: the trials, the study and what was confirmed are saved in {folder}; "
            f"go on with `python -m tune.run --resume {folder}`, or export what there is with "
            f"`python -m tune.export {folder}`"
        )


def _sigterm_as_sigint(signum: int, frame: object) -> None:
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:  # SIG_IGN or SIG_DFL for SIGINT: do what an unhandled Ctrl-C does
        raise KeyboardInterrupt


def take_sigterm() -> None:
    """Handle SIGTERM as SIGINT from now on (main thread only). Called once Ray is connected:
    `ray.init` installs its own SIGTERM handler in the driver, which prints a stack and ends the
    process with nothing saved. `sigterm_as_sigint` puts back what was there before it."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _sigterm_as_sigint)


@contextlib.contextmanager
def sigterm_as_sigint() -> Iterator[None]:
    """While inside, SIGTERM does whatever SIGINT does at that moment (Tune's graceful stop during
    the search, a KeyboardInterrupt elsewhere). Only in the main thread, where signals are handled."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, _sigterm_as_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
