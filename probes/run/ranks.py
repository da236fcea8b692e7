"""Inside one rank of a distributed run: the process group, the DDP wrap, buffer fingerprints
where DDP keeps buffers in sync, and what the distributed samplers did.

The parent (:class:`audit.probes.run.rank_launch.RankLauncher`, for ``--nproc``) starts every
rank the way ``torchrun`` does (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``); the worker calls :func:`start` before the target, :func:`prepare` after it
and :meth:`RankTracker.close` at the end. Buffers are fingerprinted at the start of each step's
first forward pass of the wrapped module, after DDP's buffer broadcast: where DDP keeps them
equal, they must be equal.
"""
from __future__ import annotations

import os
import traceback
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Optional, cast

import torch
from torch import nn

from audit.probes.run import fingerprint as fp
from audit.probes.run.processes import Frame, user_frame
from audit.probes.run.spec import DistSpec
from audit.probes.results.records import Record

if TYPE_CHECKING:  # imported by the training loop, which imports this module
    from torch.utils.hooks import RemovableHandle

    from audit.probes.run.trace import TraceWriter
    from audit.probes.run.training import TrainingSetup

#: Index lists kept per sampler for the disjointness check (the first epoch of each rank).
MAX_INDICES = 100_000
#: The prefix DDP puts before the wrapped module's names.
DDP_PREFIX = "module."


@dataclass
class RankContext:
    rank: int
    world: int
    local: int
    device: torch.device


def start(spec: DistSpec, device: torch.device) -> RankContext:
    """Join the process group the parent set up (before the target is called) and start
    watching distributed samplers; returns this rank's place and device."""
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if device.type == "cuda":
        device = torch.device("cuda", local % max(torch.cuda.device_count(), 1))
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = float(spec.timeout)  # seconds a rank waits for its peers, in every collective
    SamplerWatch.install()
    dist.init_process_group(backend, rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout))
    return RankContext(rank, world, local, device)


def _wrap(model: nn.Module, ctx: RankContext) -> tuple[nn.Module, bool]:
    from torch.nn.parallel import DistributedDataParallel as DDP

    if isinstance(model, DDP):
        return model, False
    model = model.to(ctx.device)
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DDP(model, device_ids=ids), True


def _shard_synthetic(data: list[Any], model: nn.Module, ctx: RankContext, seed: int) -> list[Any]:
    """Rank r > 0 gets its own synthetic batches (rank 0 keeps the single-process ones)."""
    if ctx.rank == 0 or not data:
        return data
    from audit.probes.run import training

    inputs, _ = data[0]
    classes = training.infer_num_classes(model)
    return training.synthetic_batches(tuple(inputs.shape[1:]), classes, inputs.shape[0],
                                      len(data), seed + 7919 * ctx.rank)


def prepare(setup: TrainingSetup, ctx: RankContext, writer: TraceWriter, seed: int) -> "RankTracker":
    """Wrap the model in DDP unless the target did, shard the tool's synthetic data, and
    start fingerprinting synchronized buffers; writes a ``dist`` record."""
    if setup.synthetic:
        setup.data = _shard_synthetic(cast(list[Any], setup.data), setup.model, ctx, seed)  # the tool's own batches
    setup.model, wrapped = _wrap(setup.model, ctx)
    inner = cast(nn.Module, setup.model.module)  # DDP's wrapped model
    writer.write({"type": Record.DIST, "rank": ctx.rank, "world": ctx.world, "wrapped": wrapped,
                  "prefix": DDP_PREFIX,
                  "broadcast_buffers": bool(getattr(setup.model, "broadcast_buffers", True)),
                  "buffers": [n for n, _ in inner.named_buffers()]})
    return RankTracker(inner, writer)


class RankTracker:
    """Fingerprints the wrapped module's buffers at the start of each step's first forward
    (after DDP's broadcast), and writes them, one ``replica`` record per step."""

    def __init__(self, inner: nn.Module, writer: TraceWriter):
        self.inner, self.writer = inner, writer
        self.buffers: Optional[list[Any]] = None
        self.handle: Optional[RemovableHandle] = inner.register_forward_pre_hook(self._pre)
        self.samplers_written = False

    def _pre(self, module, args):
        if self.buffers is None:
            bufs = [b for _, b in self.inner.named_buffers()]
            self.buffers = [fp.as_text(v) for v in fp.gather(fp.fingerprints(bufs))]

    def on_step(self, done: int) -> None:
        self.writer.write({"type": Record.REPLICA, "step": done - 1, "buffers": self.buffers or []})
        self.buffers = None

    def write_samplers(self) -> None:
        """The ``samplers`` record: what the samplers did in the traced steps (once; a pass
        after them, e.g. the CUDA-op scan's batch, is not one of the run's epochs)."""
        if not self.samplers_written:
            self.samplers_written = True
            self.writer.write({"type": Record.SAMPLERS, "samplers": SamplerWatch.report()})

    def close(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        self.write_samplers()


def finish() -> None:
    """Leave the process group (if joined): no rank leaves NCCL/gloo state behind."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:
            pass


# ------------------------------------------------------------------ distributed samplers


def _user_place() -> Optional[str]:
    """``file:line`` of the innermost frame of the user's code (not ours, torch's or stdlib's)."""
    found = user_frame([Frame(os.path.abspath(f.filename), f.lineno or 0, f.name)
                        for f in reversed(traceback.extract_stack())])
    return found.where if found else None


class SamplerWatch:
    """Records every ``DistributedSampler``: where it was made, whether it shuffles, each
    pass's epoch and order digest, and the first pass's indices."""

    made: list[Any] = []

    @classmethod
    def install(cls) -> None:
        from torch.utils.data.distributed import DistributedSampler

        if getattr(DistributedSampler, "_audit_watched", False):
            return
        original_init, original_iter = DistributedSampler.__init__, DistributedSampler.__iter__

        def init(self, *args, **kwargs):
            original_init(self, *args, **kwargs)
            self._audit_record = {"where": _user_place(), "shuffle": bool(self.shuffle),
                                  "passes": [], "indices": None}
            cls.made.append(self._audit_record)

        def iterate(self):
            indices = list(original_iter(self))
            record = getattr(self, "_audit_record", None)
            if record is not None:
                digest = fp.bytes_fingerprint(repr(indices).encode())
                record["passes"].append({"epoch": int(self.epoch), "order": digest})
                if record["indices"] is None and len(indices) <= MAX_INDICES:
                    record["indices"] = [int(i) for i in indices]
            return iter(indices)

        DistributedSampler.__init__ = init  # type: ignore[method-assign]  # patched to watch the user's samplers
        DistributedSampler.__iter__ = iterate  # type: ignore[method-assign]  # patched to watch the user's samplers
        DistributedSampler._audit_watched = True  # type: ignore[attr-defined]  # our mark on the patched class

    @classmethod
    def report(cls) -> list[Any]:
        return [dict(r) for r in cls.made]

