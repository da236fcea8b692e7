"""Script mode for scripts that start their ranks themselves with ``torch.multiprocessing``
(``mp.spawn(fn, nprocs=N)``, ``mp.start_processes``).

In the script's own process, :class:`SpawnPatch` wraps the first such call: every child runs
``fn(i, *args)`` inside a :class:`TracedRank`, which runs it under the bootstrap (the same
tracer, knobs and RNG tracing as the script) with a spec of its own: trace
``TRACE.rank{i}``, its own escape and seed logs, ``dist`` (so the child records what a rank
records, :mod:`audit.probes.script.ranks`) and the run's rendezvous store, which the script's
process hosts (:mod:`audit.probes.run.rendezvous`). A ``spawn``
record in the script's trace names the children's files; the audit reads them as the ranks of
the run. Later calls, and processes made by hand with ``multiprocessing.Process``, are not
traced.
"""
from __future__ import annotations

import importlib
import os
import sys
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable

from audit.probes.run import rendezvous
from audit.probes.results.records import Record
from audit.probes.run.spec import DistSpec, RunSpec

if TYPE_CHECKING:
    from audit.probes.run.trace import TraceWriter

#: What a child's run ending ends its process with (crashed, the script found nothing to run).
EXIT_CODES = (3, 4)


def child_specs(spec: RunSpec, nprocs: int, port: int) -> list[RunSpec]:
    """The spec of each child: the script's, with files and a lockstep folder of its own."""
    out = []
    for rank in range(nprocs):
        child = replace(spec, trace=f"{spec.trace}.rank{rank}",
                        escape_log=f"{spec.escape_log or spec.trace}.rank{rank}",
                        seed_log=f"{spec.seed_log or spec.trace + '.seeds'}.rank{rank}",
                        dist=DistSpec(nproc=nprocs, port=port, spawned=True), rank_specs=[])
        if spec.lockstep:
            child.lockstep = replace(spec.lockstep,
                                     folder=os.path.join(spec.lockstep.folder, f"rank{rank}"))
        out.append(child)
    return out


class TracedRank:
    """A child's function under the bootstrap (picklable: ``fn`` as ``mp.spawn`` gets it, the
    specs, and where the bootstrap's ``run`` is: ``"module:function"``, imported in the child,
    since the bootstrap runs as ``__main__`` in the script's process)."""

    def __init__(self, fn: Callable[..., Any], specs: list[RunSpec], runner: str):
        self.fn, self.specs, self.runner = fn, specs, runner

    def __call__(self, index: int, *args: Any) -> None:
        from audit.probes.run.processes import answer_stack_requests

        answer_stack_requests()  # SIGTERM from mp.spawn's clean-up: the end record is written
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo0" if sys.platform == "darwin" else "lo")

        def call() -> None:
            self.fn(index, *args)

        module, _, name = self.runner.partition(":")
        runner = getattr(importlib.import_module(module), name)
        code = runner(self.specs[index], None, call=call)
        sys.stdout.flush()
        if code in EXIT_CODES:  # mp.spawn's parent sees the child fail, as without the audit
            sys.exit(code)


class SpawnPatch:
    """``torch.multiprocessing.start_processes`` (which ``spawn`` calls) with the first call's
    children traced; :meth:`close` puts the original back."""

    def __init__(self, spec: RunSpec, writer: TraceWriter, runner: str) -> None:
        self.spec, self.writer, self.runner = spec, writer, runner
        self.used = False
        self._original: Any = None  # torch's start_processes, while installed
        self._store: Any = None  # the children's rendezvous store, served while the script runs

    def install(self) -> None:
        import torch.multiprocessing as tmp

        module = sys.modules["torch.multiprocessing.spawn"]
        self._original = module.start_processes
        # patched where the script calls it; torch.multiprocessing's stub does not list it
        module.start_processes = tmp.start_processes = self.start_processes  # type: ignore[attr-defined]

    def start_processes(self, fn, args=(), nprocs=1, join=True, daemon=False,
                        start_method="spawn"):
        if self.used or not self.spec.trace:
            return self._original(fn, args, nprocs, join, daemon, start_method)
        self.used = True
        self._store = rendezvous.host_store(nprocs)
        specs = child_specs(self.spec, nprocs, self._store.port)
        self.writer.write({"type": Record.SPAWN, "nprocs": nprocs, "start_method": start_method,
                           "traces": [s.trace for s in specs],
                           "escape_logs": [s.escape_log for s in specs],
                           "seed_logs": [s.seed_log for s in specs]})
        return self._original(TracedRank(fn, specs, self.runner), args, nprocs, join, daemon,
                              start_method)

    def close(self) -> None:
        if self._original is None:
            return
        import torch.multiprocessing as tmp

        # the module object, not in torch's stub
        sys.modules["torch.multiprocessing.spawn"].start_processes = self._original  # type: ignore[attr-defined]
        tmp.start_processes = self._original
        self._original = None
        self._store = None
