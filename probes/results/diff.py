"""The result model of ``audit diff`` and ``audit record`` (schema ``audit.diff/1``).

Plain dataclasses, free of torch: the reporters read them, ``to_dict`` gives ``diff.json`` as
the contract fixes it (contract fields first, extras after) and ``from_dict`` reads it back.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from audit.probes.results import GrowthPoint, Renderable, StepAgreement, build, plain

DIFF_SCHEMA = "audit.diff/1"
RECORD_SCHEMA = "audit.record/1"  # what `audit record` reports (not the reference file's)
#: Stages of a diff, in the order one step flows: the determinism stages plus ``loss``.
DIFF_STAGES = ("init", "data", "rng", "forward", "loss", "backward", "optimizer")
VERDICTS = ("identical", "differs", "nondeterministic")
#: Environment keys compared between the sides, in the order they are listed.
ENVIRONMENT_KEYS = ("python", "torch", "cuda", "cudnn", "numpy", "cpu", "threads", "interop_threads",
                    "device", "gpu", "torchvision", "platform")
#: A loss curve whose relative difference stays below this is "rounding level".
ROUNDING_LEVEL = 1e-4


@dataclass
class DiffSide:
    """One side: ``a`` is before (or the reference), ``b`` after."""

    target: str
    environment: dict[str, Any] = field(default_factory=dict)
    mode: str = "target"  # "target" | "script" | "reference"
    code: Optional[str] = None  # fingerprint of the source trained (None: not recorded)


@dataclass
class EnvironmentChange:
    key: str
    a: Optional[object]
    b: Optional[object]


@dataclass
class Difference:
    """Where the sides first part; ``module``/``tensor`` are side b's names, ``module_a``/
    ``tensor_a`` side a's for the same place."""

    step: Optional[int]
    stage: str
    module: Optional[str] = None
    tensor: Optional[str] = None
    max_abs_diff: Optional[float] = None
    module_a: Optional[str] = None
    tensor_a: Optional[str] = None


@dataclass
class Rename:
    """A module matched across the sides under another name (``from`` in JSON is ``source``)."""

    source: str  # side a's name
    to: str  # side b's name


@dataclass
class Replaced:
    """A module matched by position and parameter shapes whose type changed (GELU for ReLU)."""

    a: str
    b: str
    a_type: str
    b_type: str


@dataclass
class Unmatched:
    """Modules without a counterpart on the other side."""

    a: list[str] = field(default_factory=list)
    b: list[str] = field(default_factory=list)


@dataclass
class LossCurves:
    a: list[Optional[float]] = field(default_factory=list)
    b: list[Optional[float]] = field(default_factory=list)
    max_rel_diff: Optional[float] = None
    step_of_max: Optional[int] = None


@dataclass
class SelfDifference:
    """A side that disagreed with its own rerun at or before the first difference."""

    side: str  # "a" | "b"
    step: Optional[int]
    stage: str


@dataclass
class DiffResult(Renderable):
    """What ``audit diff`` found (``diff.json``); Jupyter shows it as its report.

    ``verdict``: ``"identical"``, ``"differs"`` or ``"nondeterministic"`` (a side disagrees
    with itself). ``first_difference`` (also ``first_divergence``): where side ``b`` first
    parts from side ``a`` (``step``, ``stage``, ``module``, ``tensor``), None when they agree.
    ``renamed``: modules matched across a rename; ``environment_changes``: what differs in the
    machines or versions."""

    verdict: str  # "identical" | "differs" | "nondeterministic"
    steps: int
    seed: int
    a: DiffSide
    b: DiffSide
    environment_changes: list[EnvironmentChange] = field(default_factory=list)  # [EnvironmentChange]
    first_difference: Optional[Difference] = None
    renamed: list[Rename] = field(default_factory=list)  # [Rename]
    loss: LossCurves = field(default_factory=LossCurves)
    schema: str = DIFF_SCHEMA
    device: str = "cpu"
    mode: str = "pair"  # "pair" (two targets) | "against" (a recorded reference)
    replaced: list[Replaced] = field(default_factory=list)  # [Replaced]
    unmatched: Unmatched = field(default_factory=Unmatched)
    self_difference: Optional[SelfDifference] = None
    drift: Optional[str] = None  # "rounding" | "material": how large the difference grows
    timeline: list[StepAgreement] = field(default_factory=list)  # [StepAgreement], stages as DIFF_STAGES
    growth: list[GrowthPoint] = field(default_factory=list)  # [GrowthPoint]
    detail: dict[str, Any] = field(default_factory=dict)
    error: Optional[str] = None
    seconds: Optional[float] = None

    @property
    def first_divergence(self) -> Optional[Difference]:
        """``first_difference`` under the name the other audits use."""
        return self.first_difference

    @property
    def same_code(self) -> Optional[bool]:
        """Do both sides train the same code (the same target or command, and the same source
        fingerprint)? None when a side's fingerprint was not recorded."""
        if self.a.code is None or self.b.code is None:
            return None
        return self.a.code == self.b.code and self.a.target == self.b.target

    @property
    def likely_reason(self) -> Optional[str]:
        """``"environment"`` when the numbers differ although the code is the same."""
        moved = self.verdict == "differs" and self.first_difference is not None
        return "environment" if moved and self.same_code else None

    def to_dict(self) -> dict[str, Any]:
        data = plain(self)
        data["same_code"], data["likely_reason"] = self.same_code, self.likely_reason
        data["renamed"] = [{"from": r.source, "to": r.to} for r in self.renamed]
        head = ["schema", "verdict", "steps", "seed", "a", "b", "environment_changes",
                "first_difference", "renamed", "loss"]
        return {**{k: data[k] for k in head}, **{k: v for k, v in data.items() if k not in head}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DiffResult":
        data = dict(data)  # same_code, likely_reason: derived, left out by build
        data["a"] = build(DiffSide, data.get("a") or {"target": ""})
        data["b"] = build(DiffSide, data.get("b") or {"target": ""})
        data["environment_changes"] = [build(EnvironmentChange, c)
                                       for c in data.get("environment_changes", [])]
        fd = data.get("first_difference")
        data["first_difference"] = build(Difference, fd) if fd else None
        data["renamed"] = [Rename(source=r["from"], to=r["to"]) for r in data.get("renamed", [])]
        data["loss"] = build(LossCurves, data.get("loss") or {})
        data["replaced"] = [build(Replaced, r) for r in data.get("replaced", [])]
        data["unmatched"] = build(Unmatched, data.get("unmatched") or {})
        sd = data.get("self_difference")
        data["self_difference"] = build(SelfDifference, sd) if sd else None
        data["timeline"] = [build(StepAgreement, r) for r in data.get("timeline", [])]
        data["growth"] = [build(GrowthPoint, r) for r in data.get("growth", [])]
        return build(cls, data)

    @property
    def passed(self) -> bool:
        return self.verdict == "identical" and self.error is None


@dataclass
class RecordResult(Renderable):
    """What ``audit record`` found: ``recorded`` (the file can be written) or
    ``nondeterministic`` (the target disagreed with itself; nothing is written)."""

    verdict: str  # "recorded" | "nondeterministic"
    target: str
    steps: int
    seed: int
    device: str
    self_difference: Optional[SelfDifference] = None
    size_bytes: Optional[int] = None
    path: Optional[str] = None
    seconds: Optional[float] = None
    schema: str = RECORD_SCHEMA

    def to_dict(self) -> dict[str, Any]:
        data = plain(self)
        return {"schema": data.pop("schema"), **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RecordResult":
        data = dict(data)
        sd = data.get("self_difference")
        data["self_difference"] = build(SelfDifference, sd) if sd else None
        return build(cls, data)

    @property
    def passed(self) -> bool:
        return self.verdict == "recorded"
