"""Showing an audit's progress: a live bar on a terminal, one line per phase in a log.

:class:`ProgressDisplay` is the ``progress`` callable the face hands an engine. On a TTY it
draws a tqdm bar per phase (steps done of the phase's total, elapsed time and an estimate,
redrawn at least twice a second so a slow step is told from a hang); elsewhere (CI logs) it
prints one line per phase, ``audit progress: PHASE at 12.3 s`` (since the start), on stderr.
"""
from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

from audit.probes.progress import Progress

PREFIX = "audit progress:"
_REDRAW = 0.5  # seconds between redraws when no step is made (the elapsed time still moves)


class ProgressDisplay:
    """Draws :class:`~audit.probes.progress.Progress` events on ``stream`` (default stderr)."""

    def __init__(self, stream: Optional[TextIO] = None, tty: Optional[bool] = None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.started = time.monotonic()
        self.phase: Optional[str] = None
        self._bar = None
        self._drawn = 0.0

    def __call__(self, event: Progress) -> None:
        if event.phase != self.phase:
            self._begin(event)
        if self._bar is None:
            return
        now = time.monotonic()
        if event.done != self._bar.n or now - self._drawn > _REDRAW:
            self._bar.n = min(event.done, self._bar.total or event.done)
            self._bar.refresh()
            self._drawn = now

    def _begin(self, event: Progress) -> None:
        self._close_bar()
        self.phase = event.phase
        if not self.tty:
            elapsed = time.monotonic() - self.started
            print(f"{PREFIX} {event.phase} at {elapsed:.1f} s", file=self.stream, flush=True)
            return
        from tqdm import tqdm

        self._bar = tqdm(total=event.total or None, desc=f"audit: {event.phase}", unit="step",
                         file=self.stream, leave=False, dynamic_ncols=True, mininterval=0)
        self._drawn = time.monotonic()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def close(self) -> None:
        """Remove the bar (a terminal is left clean for the summary)."""
        self._close_bar()


def display(quiet: bool) -> Optional[ProgressDisplay]:
    """The progress display for a command (None under ``--quiet``)."""
    return None if quiet else ProgressDisplay()
