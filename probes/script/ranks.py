"""Script mode inside a rank: what target mode's worker records about distributed training
(:mod:`audit.probes.run.ranks`), for a script that makes its own process group and its own DDP.

:func:`attach` is called by the bootstrap once the tracer exists. In a rank (the spec has
``dist``: a process the audit started as torchrun would, or a ``torch.multiprocessing`` child)
it returns a :class:`RankObserver`: it watches every ``DistributedSampler``, sees the script's
first ``DistributedDataParallel`` being made (a ``dist`` record, then the wrapped module's
buffers fingerprinted at the start of each step's first forward, after DDP's broadcast), and
points the script's rendezvous at the run's own store, hosted by the audit on the loopback
interface (a script that writes ``MASTER_PORT = "12355"`` would otherwise collide with the run
next to it). In
the script's own process it returns a :class:`~audit.probes.script.spawn.SpawnPatch` instead:
children started with ``torch.multiprocessing`` are traced as ranks.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Optional, Union
from urllib.parse import urlsplit, urlunsplit

from audit.probes.run import ranks, rendezvous
from audit.probes.script.spawn import SpawnPatch
from audit.probes.run.spec import RunSpec

if TYPE_CHECKING:
    from audit.probes.run.trace import TraceWriter
    from audit.probes.script.tracer import ScriptTracer

LOOPBACK = rendezvous.LOOPBACK


def attach(spec: RunSpec, writer: TraceWriter, tracer: ScriptTracer,
           runner: str) -> Union[RankObserver, SpawnPatch]:
    """Start observing: a rank's :class:`RankObserver` (also set as the tracer's ``on_step``),
    or the :class:`SpawnPatch` of a script that may start ranks itself (``runner``,
    ``"module:function"``, runs a child's function under the bootstrap)."""
    if spec.dist:
        observer = RankObserver(writer, spec.dist.port)
        observer.install()
        tracer.on_step = observer.on_step
        return observer
    patch = SpawnPatch(spec, writer, runner)
    patch.install()
    return patch


def local_url(url: str, port: Union[int, str, None]) -> str:
    """The rendezvous the script asked for, moved to the run's store, which the audit hosts on
    a loopback port (:mod:`audit.probes.run.rendezvous`): ``env://`` reads the environment (set
    here), ``tcp://HOST:PORT`` is rewritten; others are left alone."""
    if not port or not isinstance(url, str):
        return url
    if url.startswith("env://"):
        os.environ.update(rendezvous.client_env(port))
        return url
    if url.startswith("tcp://"):
        os.environ.update(rendezvous.client_env(port))  # the store there is the audit's
        parts = urlsplit(url)
        return urlunsplit(parts._replace(netloc=f"{LOOPBACK}:{port}"))
    return url


class RankObserver:
    """One rank's distributed records: ``dist`` (at the first DDP), ``replica`` per step and
    ``samplers`` at the end; :meth:`close` also leaves the process group the script made."""

    def __init__(self, writer: TraceWriter, port: Union[int, str, None] = None) -> None:
        self.writer = writer
        self.port = port or os.environ.get("MASTER_PORT")
        self.tracker: Optional[ranks.RankTracker] = None
        self._patches: list[tuple[Any, str, Any]] = []  # (owner, name, original)
        self.closed = False

    def install(self) -> None:
        from torch.distributed import distributed_c10d as c10d
        from torch.nn.parallel import DistributedDataParallel as DDP

        ranks.SamplerWatch.install()
        original_init, original_rendezvous = DDP.__init__, c10d.rendezvous
        observer = self

        def ddp_init(ddp, *args, **kwargs):
            original_init(ddp, *args, **kwargs)
            observer.on_ddp(ddp)

        def rendezvous(url, *args, **kwargs):
            return original_rendezvous(local_url(url, observer.port), *args, **kwargs)

        # as functools.wraps sets it
        ddp_init.__wrapped__, rendezvous.__wrapped__ = original_init, original_rendezvous  # type: ignore[attr-defined]
        # patched to join the audit's store
        DDP.__init__, c10d.rendezvous = ddp_init, rendezvous  # type: ignore[method-assign, assignment]
        self._patches = [(DDP, "__init__", original_init), (c10d, "rendezvous", original_rendezvous)]

    def on_ddp(self, ddp: Any) -> None:
        """The script's first DDP: its rank, its buffers, and the tracker of its module."""
        import torch.distributed as dist

        if self.tracker is not None:
            return
        inner = ddp.module
        self.writer.write({"type": "dist", "rank": dist.get_rank(), "world": dist.get_world_size(),
                           "wrapped": False, "prefix": ranks.DDP_PREFIX,
                           "broadcast_buffers": bool(getattr(ddp, "broadcast_buffers", True)),
                           "buffers": [n for n, _ in inner.named_buffers()]})
        self.tracker = ranks.RankTracker(inner, self.writer)

    def on_step(self, done: int) -> None:
        if self.tracker is not None:
            self.tracker.on_step(done)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for owner, name, original in reversed(self._patches):
            setattr(owner, name, original)
        self._patches = []
        if self.tracker is not None:
            self.tracker.close()  # writes the samplers record
            self.tracker = None
        else:
            self.writer.write({"type": "samplers", "samplers": ranks.SamplerWatch.report()})
        ranks.finish()
