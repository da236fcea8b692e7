"""Data sharding and per-rank randomness of a distributed run, from its ranks' traces.

A ``DistributedSampler`` shuffles with ``seed + epoch``; never told ``set_epoch``, it replays
one order every epoch (cause ``sampler_epoch``, reported whatever the runs and replicas do).
Ranks must see disjoint samples within an epoch; the notes say when they do not, and whether
the ranks draw dropout masks and augmentations from one RNG state or from their own.
"""
from __future__ import annotations

from itertools import combinations
from typing import Any, Optional

from audit.probes.results import Cause
from audit.probes.results.records import Record

SET_EPOCH_FIX = ("for epoch in range(epochs):\n"
                 "    sampler.set_epoch(epoch)  # before iterating the loader, on every rank\n"
                 "    for batch in loader: ...")


def _samplers(records: list[dict[str, Any]]) -> list[Any]:
    return next((r.get("samplers") or [] for r in records if r.get("type") == Record.SAMPLERS), [])


def _replayed(sampler: dict[str, Any]) -> Optional[tuple[Any, ...]]:
    """The first two passes (epochs) that drew the same order, if any."""
    seen: dict[str, Any] = {}
    for i, p in enumerate(sampler.get("passes") or []):
        if p.get("order") in seen:
            return seen[p["order"]], i, p.get("epoch")
        seen[p.get("order")] = i
    return None


def sampler_causes(traces: list[Any]) -> list[Any]:
    """``sampler_epoch`` for each shuffling DistributedSampler whose order came back in a later
    epoch (from rank 0's trace)."""
    out = []
    for sampler in _samplers(traces[0]) if traces else []:
        replay = _replayed(sampler) if sampler.get("shuffle") else None
        if replay is None:
            continue
        a, b, epoch = replay
        out.append(Cause(
            "sampler_epoch", True,
            f"the DistributedSampler drew the same order in pass {a + 1} and pass {b + 1} over "
            f"the data (its epoch stayed {epoch}): set_epoch() was not called with a new epoch, "
            "so every epoch replays one shuffle",
            SET_EPOCH_FIX, sampler.get("where")))
    return out


def sharding_note(traces: list[Any]) -> str:
    """Whether the ranks saw disjoint samples: from the samplers' first epoch, else (data
    without a DistributedSampler) from the batches each rank trained on."""
    samplers = [_samplers(t) for t in traces]
    if samplers[0]:
        return _sampler_sharding(samplers)
    steps = [[r for r in t if r.get("type") == Record.STEP] for t in traces]
    count = min(len(s) for s in steps)
    if count and len(traces) > 1 and all(
            len({s[k].get("inputs") for s in steps}) == 1 for k in range(count)):
        return ("every rank trained on the same batch at every step: the data is not sharded, "
                "so each rank repeats the others' work (use a DistributedSampler)")
    return ""


def _sampler_sharding(samplers: list[Any]) -> str:
    where = samplers[0][0].get("where") or "an unknown place"
    indices = [set(s[0].get("indices") or []) if s else set() for s in samplers]
    for a, b in combinations(range(len(indices)), 2):
        common = indices[a] & indices[b]
        if len(common) > len(samplers) - 1:  # padding may repeat a few samples
            return (f"the DistributedSampler made at {where} gives rank {a} and rank {b} "
                    f"{len(common)} common samples in an epoch: each rank must get its own shard "
                    "(the same num_replicas, seed and shuffle on every rank, its own rank)")
    return f"ranks saw disjoint samples within an epoch (DistributedSampler made at {where})"


def rank_rng_note(traces: list[Any]) -> str:
    """How the ranks' torch RNG states relate at the first step: one state for all, or each
    its own."""
    states = []
    for t in traces:
        step = next((r for r in t if r.get("type") == Record.STEP), None)
        if step is None:
            return ""
        states.append((step.get("rng") or {}).get("torch_cpu"))
    if len(states) < 2:
        return ""
    if len(set(states)) == 1:
        return ("every rank starts training from the same torch RNG state (one seed for all "
                "ranks): dropout masks and random augmentations are identical on every rank")
    return ("the ranks start from different torch RNG states: each rank draws its own dropout "
            "masks and augmentations")
