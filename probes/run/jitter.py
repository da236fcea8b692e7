"""Varied DataLoader worker timing: makes an order that depends on which worker finishes
first (``in_order=False``) show itself. Each worker sleeps a random few milliseconds, drawn
from the operating system (not from any generator the script or the seed controls), before
each fetch, and a longer one as it starts, so that the worker started first (the one that
finishes first when nothing varies) is no likelier than the others to deliver first.
Installed in every worker through ``worker_init_fn``, so it holds under any multiprocessing
start method."""
from __future__ import annotations

import os
import time
from typing import Any, Callable, Optional

#: The longest delay before a fetch, in seconds.
MAX_DELAY = 0.02
#: The longest delay as a worker starts, in seconds: longer than workers take to start one
#: after another, even on a loaded machine.
MAX_START_DELAY = 0.15


def _delay(longest: float = MAX_DELAY) -> float:
    return int.from_bytes(os.urandom(2), "little") / 65535 * longest


class JitterInit:
    """A ``worker_init_fn`` that installs the delays, then calls the script's own (if any)."""

    def __init__(self, inner: Optional[Callable[[int], Any]] = None) -> None:
        self.inner = inner

    def __call__(self, worker_id: int) -> None:
        from torch.utils.data._utils import fetch

        for cls in (fetch._MapDatasetFetcher, fetch._IterableDatasetFetcher):
            original = cls.fetch
            if getattr(original, "jittered", False):
                continue

            def slow(self: Any, index: Any, _original: Callable[..., Any] = original) -> Any:
                time.sleep(_delay())
                return _original(self, index)

            slow.jittered = True  # type: ignore[attr-defined]  # our mark on the patched method
            cls.fetch = slow  # type: ignore[method-assign]  # patched to jitter the fetch
        time.sleep(_delay(MAX_START_DELAY))
        if self.inner is not None:
            self.inner(worker_id)
