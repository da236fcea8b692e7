"""Replica consistency within one distributed run, from its ranks' traces.

DDP promises identical parameters on every rank after every step, and identical buffers where
it synchronizes them: with ``broadcast_buffers`` on it copies rank 0's buffers at the start of
each forward, so buffers are compared there (the ``replica`` records the ranks wrote), never at
the end of a step, where BatchNorm statistics legitimately differ. The first step, tensor and
rank where a copy differs from rank 0's names the parting; :func:`replica_cause` says why.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from audit.probes.run.merge import user_name
from audit.probes.results import Cause, ReplicaPoint, ReplicaRow
from audit.probes.results.records import Record


@dataclass
class ReplicaParting:
    """Where the replicas of run ``run`` first part, and its rank x step grid."""

    run: int
    first: Optional[ReplicaPoint] = None
    kind: str = ""  # "parameter" | "buffer"
    index: int = -1  # the tensor's index in its list (parameters or buffers)
    grid: list[ReplicaRow] = field(default_factory=list)  # [ReplicaRow]


@dataclass
class RankTrace:
    """What the replica check reads of one rank's trace."""

    names: list[str]
    buffers: list[Any]
    broadcast: bool
    init: list[Any]
    steps: list[Any]  # step records
    replica: dict[str, Any]  # step -> buffer fingerprints at the start of its forward
    module_sources: dict[str, Any]


def read_rank(records: list[dict[str, Any]]) -> RankTrace:
    header: dict[str, Any] = next((r for r in reversed(records) if r.get("type") == Record.PARAMS), {})
    dist: dict[str, Any] = next((r for r in records if r.get("type") == Record.DIST), {})
    env: dict[str, Any] = next((r for r in records if r.get("type") == Record.ENV), {})
    init: dict[str, Any] = next((r for r in records if r.get("type") == Record.INIT), {})
    return RankTrace(
        names=[user_name(n) for n in header.get("names", [])],
        buffers=list(dist.get("buffers") or []), broadcast=bool(dist.get("broadcast_buffers", True)),
        init=init.get("params") or [],
        steps=[r for r in records if r.get("type") == Record.STEP],
        replica={r["step"]: r.get("buffers") or [] for r in records if r.get("type") == Record.REPLICA},
        module_sources={user_name(k): v for k, v in (env.get("module_sources") or {}).items()})


def _first_diff(a: list[Any], b: list[Any]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), -1)


def replica_parting(traces: list[Any], run: int = 0) -> ReplicaParting:
    """Compare every rank with rank 0: initial parameters, then per step the buffers at the
    start of the forward and the parameters after the update."""
    ranks = [read_rank(t) for t in traces]
    ref = ranks[0]
    out = ReplicaParting(run)
    init_row = ["agree"] + ["params" if _first_diff(ref.init, r.init) >= 0 else "agree"
                            for r in ranks[1:]]
    out.grid.append(ReplicaRow(None, init_row))
    for rank, r in enumerate(ranks[1:], start=1):
        i = _first_diff(ref.init, r.init)
        if i >= 0 and out.first is None:
            out.first, out.kind, out.index = ReplicaPoint(None, ref.names[i], rank), "parameter", i
    count = min(len(r.steps) for r in ranks)
    for k in range(count):
        step = ref.steps[k].get("step", k)
        row = ["agree"]
        for rank, r in enumerate(ranks[1:], start=1):
            b = _first_diff(ref.replica.get(step, []), r.replica.get(step, []))
            p = _first_diff(ref.steps[k].get("params", []), r.steps[k].get("params", []))
            row.append({(True, True): "both", (True, False): "buffers",
                        (False, True): "params"}.get((b >= 0, p >= 0), "agree"))
            if out.first is None and b >= 0:
                out.first, out.kind, out.index = ReplicaPoint(step, ref.buffers[b], rank), "buffer", b
            elif out.first is None and p >= 0:
                out.first, out.kind, out.index = ReplicaPoint(step, ref.names[p], rank), "parameter", p
        out.grid.append(ReplicaRow(step, row))
    return out


def _where(name: str, sources: dict[str, Any]) -> Optional[str]:
    """The user's module that owns a tensor (its forward's ``file:line``), when known."""
    owner = name.rpartition(".")[0]
    while True:
        if owner in sources:
            return sources[owner]
        if not owner:
            return None
        owner = owner.rpartition(".")[0]


def _step_record(trace: RankTrace, step: Optional[int]) -> dict[str, Any]:
    return next((s for s in trace.steps if s.get("step") == step), {})


def _parameter_reason(ranks: list[RankTrace], parting: ReplicaParting) -> tuple[str, str]:
    assert parting.first is not None  # a parting has the point where it starts
    step, i, rank = parting.first.step, parting.index, parting.first.rank
    if step is None:
        return ("the ranks start from different initial values: DDP was not told about it when "
                "it broadcast rank 0's parameters",
                "build the model identically on every rank (same seed before construction), "
                "then wrap it in DDP, which broadcasts rank 0's parameters")
    grads = [(_step_record(r, step).get("grads") or [None] * (i + 1))[i] for r in (ranks[0], ranks[rank])]
    fix = ("change it the same way on every rank (from values all ranks share), or\n"
           "torch.distributed.broadcast(param.data, src=0)  # after changing it\n"
           "# state that is not trained belongs in a buffer: self.register_buffer(...)")
    if grads[0] is None and grads[1] is None:
        return (f"it has no gradient, yet rank {rank} changed it: an update outside DDP's "
                "all-reduce, which only averages gradients", fix)
    if grads[0] != grads[1]:
        return ("its gradient differs between ranks: it was not all-reduced (a parameter DDP "
                "does not know about, or a step under no_sync())",
                "register it with the module DDP wraps and let backward() run through DDP's "
                "forward on every step\n# no_sync() only for accumulation steps followed by a "
                "synchronized one")
    return ("its all-reduced gradient agreed, but the update did not: something changes it per "
            "rank after the gradients are averaged", fix)


def _buffer_reason(trace: RankTrace) -> tuple[str, str]:
    when = ("although DDP copies rank 0's buffers at each forward" if trace.broadcast else
            "and DDP was built with broadcast_buffers=False, so it never copies buffers")
    return (f"it differs at the start of the forward pass, {when}: one rank changes it and "
            "nothing synchronizes it",
            "DDP(model, broadcast_buffers=True)  # rank 0's buffers copied at each forward\n"
            "# BatchNorm statistics: model = nn.SyncBatchNorm.convert_sync_batchnorm(model)\n"
            "# your own buffer: torch.distributed.all_reduce(buf) (or broadcast) where you update it")


def _rng_proof(launcher: Any, parting: ReplicaParting) -> Optional[int]:
    """Steps through which the ranks stayed identical with every unseeded generator seeded
    from its place (the seed-escapes knob), if that rerun covered the parting step."""
    assert parting.first is not None  # a parting has the point where it starts
    step = -1 if parting.first.step is None else parting.first.step
    for name, out in launcher.finished.items():
        if not name.startswith("knob-seed_escapes") or not out.ranks:
            continue
        again = replica_parting(out.ranks, parting.run)
        done = min(len(read_rank(t).steps) for t in out.ranks)
        if again.first is None and done > step:
            return done
    return None


def replica_cause(parting: ReplicaParting, traces: list[Any], launcher: Any, escapes: list[Any]) -> Cause:
    """Cause ``unsynced_state`` for a replica parting: what parted, why, and the fix."""
    ranks = [read_rank(t) for t in traces]
    first = parting.first
    assert first is not None  # a parting has the point where it starts
    at = "before the first step" if first.step is None else f"at step {first.step}"
    if parting.kind == "buffer":
        reason, fix = _buffer_reason(ranks[0])
    else:
        reason, fix = _parameter_reason(ranks, parting)
    evidence = (f"{parting.kind} {first.tensor!r} on rank {first.rank} differs from rank 0's "
                f"{at}: {reason}")
    where = _where(first.tensor, ranks[0].module_sources)
    seeded = _rng_proof(launcher, parting) if escapes else None
    if seeded is not None:
        esc = escapes[0]
        evidence += (f"; a per-rank random draw reaches it: with {esc.kind} at "
                     f"{esc.where or 'an unknown place'} seeded, the ranks stayed identical "
                     f"through step {seeded - 1}")
        where = esc.where or where
        fix = ("seed every generator from the run's seed, the same on every rank, where it "
               "feeds shared state\n" + fix)
    elif escapes:
        evidence += (f"; unseeded generators run on every rank ({escapes[0].kind} at "
                     f"{escapes[0].where or 'an unknown place'}) and may reach it")
    return Cause("unsynced_state", True, evidence, fix, where)
