"""The global generators the OS seeds at start-up, whether the script seeds them, and the escape
records of those it draws from without seeding.

Python's ``random`` and NumPy's global generator start from the operating system's entropy:
their states are compared once the script seeds them. A script that draws from one it never
seeded (through a path :mod:`probes.script.draws` does not watch: the generator's own methods,
a library holding it) escapes the seed: :meth:`SeedWatch.check` sees the state moved and writes
the escape to the log (:mod:`probes.run.escape_log`). torch's default generator is not fixed at
start-up either (``torch.initial_seed()`` differs in every process), but a torch state that
differs is always compared: the draws made before seeding are :mod:`probes.script.draws`' to find.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Optional

import torch

from audit.probes.run import escape_log
from audit.probes.run.trace import rng_fingerprints

#: The OS-seeded global generators, and the escape's kind in the log.
OS_SEEDED = {"numpy": "numpy.random.seed(not called)", "python": "random.seed(not called)"}


class SeedWatch:
    """Which OS-seeded global generators the script has seeded (through :meth:`seeding`'s
    wrappers of their seeding functions), their states at :meth:`start`, and the escapes logged."""

    def __init__(self, escape_log_path: Optional[str]):
        self.escape_log = escape_log_path
        self.seeded: set[str] = set()
        self._start_states: dict[str, Any] = {}
        self._reported: set[str] = set()

    def start(self) -> None:
        """Before the script runs: the states an unseeded generator is compared with."""
        self._start_states = rng_fingerprints(torch.device("cpu"))

    def seeding(self, original: Callable[..., Any], stream: str,
                seed_call: bool) -> Callable[..., Any]:
        """``original`` (a seeding function of ``stream``'s global generator), noting the seed."""
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            value = args[0] if args else next(iter(kwargs.values()), None)
            if seed_call and value is None:  # seed(None) draws from the OS again
                self.seeded.discard(stream)
            else:
                self.seeded.add(stream)
            return original(*args, **kwargs)

        return wrapper

    def compared(self, states: dict[str, Any]) -> dict[str, Any]:
        """The RNG states a step record compares: an OS-seeded one only once it is seeded."""
        return {k: v for k, v in states.items() if k not in OS_SEEDED or k in self.seeded}

    def check(self, states: dict[str, Any], watched: set[str]) -> None:
        """A global generator the script never seeded whose state moved: the script (or a
        library it calls) draws from OS-seeded randomness. Logged as an escape, once, unless
        ``watched`` (the generators whose unseeded draw :mod:`probes.script.draws` reports)."""
        for stream, kind in OS_SEEDED.items():
            if stream in self.seeded or stream in self._reported or stream in watched \
                    or stream not in states \
                    or states[stream] == self._start_states.get(stream):
                continue
            self._reported.add(stream)
            if self.escape_log:
                owner = "NumPy's" if stream == "numpy" else "Python's random module's"
                escape_log.append(self.escape_log, [{
                    "kind": kind, "where": None, "pid": os.getpid(),
                    "detail": f"{owner} global generator is drawn from but never seeded "
                              "(it starts from the operating system's entropy)"}])
