"""``audit determinism --nproc N``: the audit over distributed runs, then what only ranks show.

Every run is N ranks (:mod:`~audit.probes.run.rank_launch`); the orchestrator compares
the runs' merged traces as it compares single processes (so localization and the knob reruns
work unchanged), then this module adds, from the per-rank traces: the first rank where the
runs part, the per-rank timelines, replica consistency within each run (parameters after every
step, buffers at the start of each forward where DDP keeps them in sync), the distributed
samplers (an order replayed every epoch, overlapping shards) and how the ranks' RNGs are seeded.
Ranks are compared by their trace files afterwards: no collective is added to training.
"""
from __future__ import annotations

from typing import Any, Optional

from audit.probes.progress import Reporter
from audit.probes.run import compare
from audit.probes.run.launcher import RunOptions
from audit.probes.determinism.orchestrate import audit_determinism
from audit.probes.run.rank_launch import RankLauncher
from audit.probes.determinism.replicas import ReplicaParting, replica_cause, replica_parting
from audit.probes.determinism.samplers import rank_rng_note, sampler_causes, sharding_note
from audit.probes.errors import UsageError
from audit.probes.results import DeterminismResult, RankTimeline, Replicas

#: Seconds a rank waits for its peers (start-up and each collective) before it fails.
DEFAULT_TIMEOUT = 120.0


def audit_distributed(opts: RunOptions, nproc: int,
                      progress: Reporter = None,
                      timeout: float = DEFAULT_TIMEOUT) -> DeterminismResult:
    """The determinism audit with every run made of ``nproc`` ranks under torch.distributed."""
    _check_devices(opts.device, nproc)
    launchers: list[Any] = []

    def make(o: RunOptions, folder: str, reporter: Reporter = None) -> RankLauncher:
        launchers.append(RankLauncher(o, folder, nproc, timeout, reporter))
        return launchers[-1]

    result = audit_determinism(opts, progress=progress, launcher=make)
    annotate(result, launchers[0], opts.runs, nproc)
    return result


def _check_devices(device: str, nproc: int) -> None:
    """NCCL needs a GPU per rank: say so before any process starts."""
    import torch

    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return
    count = torch.cuda.device_count()
    if count < nproc:
        raise UsageError(f"--nproc {nproc} on CUDA needs {nproc} GPUs (one per rank, NCCL); "
                         f"this machine has {count}: use --device cpu (gloo) or --nproc {max(count, 1)}")


def _traces(launcher: RankLauncher, runs: int) -> list[Any]:
    """Per run, its ranks' traces (runs that did not finish are left out)."""
    found = [launcher.finished.get(f"run{i}") for i in range(runs)]
    return [o.ranks for o in found if o is not None]


def annotate(result: DeterminismResult, launcher: RankLauncher, runs: int, nproc: int) -> None:
    """Add the ranks' findings to a result the orchestrator made from merged traces."""
    result.nproc = nproc
    traces = _traces(launcher, runs)
    if not traces:
        return
    result.rank_timelines = [RankTimeline(rank, compare.timeline([t[rank] for t in traces]))
                             for rank in range(nproc)]
    if result.first_divergence is not None:
        result.first_divergence.rank = first_rank(traces)
    parting = _first_replica_parting(traces)
    result.replicas = Replicas(
        verdict="diverged" if parting.first else "consistent", first=parting.first,
        run=parting.run, kind=parting.kind, grid=parting.grid)
    extra = []
    if parting.first is not None:
        extra.append(replica_cause(parting, traces[parting.run], launcher,
                                   [e for e in result.rng_escapes if e.drawn]))
    extra += sampler_causes(traces[0])
    at = next((i for i, c in enumerate(result.causes) if c.source == "unknown"), len(result.causes))
    result.causes[at:at] = extra
    for key, note in (("sharding", sharding_note(traces[0])), ("rank_rng", rank_rng_note(traces[0]))):
        if note:
            result.detail[key] = note


def first_rank(traces: list[Any]) -> Optional[int]:
    """The lowest rank at the earliest place where a run parts from run 0 on the same rank."""
    best = None
    for rank in range(len(traces[0])):
        partings = [compare.first_parting(traces[0][rank], t[rank]) for t in traces[1:]
                    if rank < len(t)]
        found = compare.earliest(partings)
        if found is not None and (best is None or found.key() < best[0]):
            best = (found.key(), rank)
    return None if best is None else best[1]


def _first_replica_parting(traces: list[Any]) -> ReplicaParting:
    """The first run whose replicas part (its grid), else run 0's grid."""
    partings = [replica_parting(t, run) for run, t in enumerate(traces)]
    return next((p for p in partings if p.first is not None), partings[0])

