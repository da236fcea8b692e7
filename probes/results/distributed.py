"""Result pieces of distributed determinism runs (``--nproc N``): replica consistency within a
run, and the rank x step grids the reports draw."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

#: Replica verdicts (contract).
REPLICA_VERDICTS = ("consistent", "diverged")
#: Cause sources that only distributed runs produce (contract).
DISTRIBUTED_SOURCES = ("unsynced_state", "sampler_epoch")


@dataclass
class ReplicaPoint:
    """Where the replicas of one run first part: the step (None: before the first step), the
    tensor, and the first rank whose copy differs from rank 0's."""

    step: Optional[int]
    tensor: str
    rank: int


@dataclass
class Replicas:
    """Replica consistency within a run (contract's ``replicas``)."""

    verdict: str  # "consistent" | "diverged"
    first: Optional[ReplicaPoint] = None
    run: int = 0  # the run the first parting was seen in
    kind: str = ""  # "parameter" | "buffer" (what parted first)
    grid: list[ReplicaRow] = field(default_factory=list)  # [ReplicaRow], run ``run``


@dataclass
class ReplicaRow:
    """One step of the rank x step replica grid: per rank, ``agree`` (with rank 0),
    ``params`` / ``buffers`` (that part differs from rank 0) or ``missing``."""

    step: Optional[int]  # None: the initial parameters
    ranks: list[str] = field(default_factory=list)  # [str], one per rank


@dataclass
class RankTimeline:
    """The run-to-run comparison of one rank: each step's stages (as ``StepAgreement``)."""

    rank: int
    rows: list[Any] = field(default_factory=list)  # [StepAgreement]
