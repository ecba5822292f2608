"""Ending a tuning run on SIGINT (Ctrl-C) or SIGTERM: the tuner's main thread gets
:class:`Interrupt`, kills its workers at once and raises :class:`TuneInterrupted`; rows of
finished problems are in the tuned file already (each is merged as it finishes)."""
from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupt(BaseException):
    """Raised in the main thread by a SIGINT or SIGTERM that arrived during a run."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class TuneInterrupted(Exception):
    """A run ended by a signal; ``finished`` problems' rows were written before it."""

    def __init__(self, signum: int, finished: int, tuned_file: str) -> None:
        name = signal.Signals(signum).name
        super().__init__(f"interrupted by {name}: {finished} finished problems kept in "
                         f"{tuned_file}; run again to tune the rest")
        self.signum, self.finished = signum, finished

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal number."""
        return 128 + self.signum


def exit_now(code: int) -> None:
    """Flush stdout and stderr and end the process at once: the run's files are closed, its
    workers dead, and a normal interpreter exit with torch and triton loaded takes seconds."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Interrupt(signum)


@contextmanager
def interruptible() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise :class:`Interrupt` in the main thread (the
    previous handlers come back after). Outside the main thread it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
