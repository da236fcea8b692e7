"""Progress events: what an engine tells the face while it works (the face draws them).

An engine calls its ``progress`` callable with a :class:`Progress` at the start of each phase
and whenever steps are done; the face shows a bar on a terminal or one line per phase in a log.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional


@dataclass(frozen=True)
class Progress:
    """Where an audit is: its phase, and the training steps (or runs) done of the phase's total."""

    phase: str  # e.g. "runs (2 x 20 steps)", "replaying to localize", "knob trial: seed_escapes"
    done: int = 0
    total: int = 0  # 0 when unknown
    unit: str = "step"
    note: str = ""  # what just ended, e.g. "run 3 of 8 (b seed 1: ok)": a log line of its own


Reporter = Optional[Callable[[Progress], None]]


def silent(event: Progress) -> None:
    """The reporter used when nobody listens."""
