"""Showing an audit's progress: a live bar on a terminal or in a notebook, one line per phase
in a log.

:class:`ProgressDisplay` is the ``progress`` callable the face hands an engine. On a TTY it
draws a tqdm bar per phase (steps done of the phase's total, elapsed time and an estimate,
redrawn at least twice a second so a slow step is told from a hang); in a Jupyter notebook the
same bar in tqdm's notebook form (a widget; a text bar redrawn in place without ipywidgets),
and nothing printed line by line; elsewhere (CI logs) it prints one line per phase,
``audit progress: PHASE at 12.3 s`` (since the start), on stderr, and one per event that
carries a note (each run of ``variance`` and ``compare`` that ends).
"""
from __future__ import annotations

import sys
import time
from typing import Any, Optional, TextIO

from audit.probes.progress import Progress

PREFIX = "audit progress:"
_REDRAW = 0.5  # seconds between redraws when no step is made (the elapsed time still moves)


class ProgressDisplay:
    """Draws :class:`~audit.probes.progress.Progress` events on ``stream`` (default stderr)."""

    def __init__(self, stream: Optional[TextIO] = None, tty: Optional[bool] = None,
                 notebook: bool = False):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.notebook = notebook  # a Jupyter kernel: tqdm's notebook bar
        self.started = time.monotonic()
        self.phase: Optional[str] = None
        self.note = ""
        self._bar = None
        self._drawn = 0.0

    def __call__(self, event: Progress) -> None:
        if event.phase != self.phase:
            self._begin(event)
        elif self._bar is None and event.note and event.note != self.note:
            self._line(event)
        self.note = event.note
        if self._bar is None:
            return
        if event.note:
            self._bar.set_postfix_str(event.note, refresh=False)
        now = time.monotonic()
        if event.done != self._bar.n or now - self._drawn > _REDRAW:
            self._bar.n = min(event.done, self._bar.total or event.done)
            self._bar.refresh()
            self._drawn = now

    def _begin(self, event: Progress) -> None:
        self._close_bar()
        self.phase = event.phase
        if not self.tty and not self.notebook:
            self._line(event)
            return
        options = dict(total=event.total or None, desc=f"audit: {event.phase}", unit=event.unit,
                       leave=False, mininterval=0)
        self._bar = _notebook_bar(options) if self.notebook else None
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(file=self.stream, dynamic_ncols=True, **options)
        self._drawn = time.monotonic()

    def _line(self, event: Progress) -> None:
        elapsed = time.monotonic() - self.started
        print(f"{PREFIX} {event.note or event.phase} at {elapsed:.1f} s", file=self.stream,
              flush=True)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def close(self) -> None:
        """Remove the bar (a terminal is left clean for the summary)."""
        self._close_bar()


def _notebook_bar(options: dict[str, Any]) -> Any:
    """tqdm's notebook bar (a widget), or None without ipywidgets (then a text bar, redrawn in
    place, stands in)."""
    from tqdm import notebook

    return notebook.tqdm(**options) if notebook.IProgress is not None else None


def in_notebook() -> bool:
    """A Jupyter kernel runs this process (ipykernel's shell), and its output is no terminal."""
    ipython = sys.modules.get("IPython")
    if ipython is None or "ipykernel" not in sys.modules or sys.stderr.isatty():
        return False
    return type(ipython.get_ipython()).__name__ == "ZMQInteractiveShell"


def notebook_display() -> Optional[ProgressDisplay]:
    """The Python API's display: a notebook bar in Jupyter; None elsewhere (a script calling
    :func:`audit.run` prints nothing)."""
    return ProgressDisplay(notebook=True) if in_notebook() else None


def display(quiet: bool) -> Optional[ProgressDisplay]:
    """The progress display for a command (None under ``--quiet``)."""
    return None if quiet else ProgressDisplay()
