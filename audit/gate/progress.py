"""Progress on long work: a tqdm status line on a terminal, nothing otherwise."""
from __future__ import annotations

import sys
from typing import Callable, Optional


class Progress:
    """A callable that shows a phase ("run 1 of 2: step 3/20"); ``close()`` when done."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=None, bar_format="{desc}", file=sys.stderr, leave=False)

    def __call__(self, message: str) -> None:
        self.bar.set_description_str(f"audit: {message}")

    def close(self) -> None:
        self.bar.close()


def progress(quiet: bool) -> Optional[Callable[[str], None]]:
    """A progress line when stderr is a terminal and not ``--quiet``; else None."""
    if quiet or not sys.stderr.isatty():
        return None
    return Progress()
