"""SIGINT and SIGTERM, while a command runs, become :class:`~audit.probes.run.processes.Interrupted`.

The exception unwinds through the engines, which end their runs (every process group) and
attach what they measured; the CLI writes those partial reports, prints one line and exits
``128 + signal`` (130 for SIGINT, 143 for SIGTERM). Once the first signal has arrived, more of
them are ignored, so a second Ctrl-C cannot break the cleanup halfway.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from types import FrameType
from typing import Iterator, Optional

from audit.probes.run.processes import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Handler:
    def __init__(self):
        self.fired = False

    def __call__(self, signum: int, frame: Optional[FrameType]) -> None:
        for other in SIGNALS:
            signal.signal(other, signal.SIG_IGN)
        self.fired = True
        raise Interrupted(signum)


@contextmanager
def signals_raise() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise :class:`Interrupted` (main thread only).
    The previous handlers come back after it, unless a signal came: then the process is
    about to exit, and more signals stay ignored (no traceback from an ``atexit`` callback)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    handler = _Handler()
    for s in SIGNALS:
        signal.signal(s, handler)
    try:
        yield
    finally:
        if not handler.fired:
            for s, old in previous.items():
                signal.signal(s, old)


def exit_status(exc: Interrupted) -> int:
    """The shell's convention: 128 + the signal's number."""
    return 128 + exc.signum
