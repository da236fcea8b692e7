"""The result of ``audit resume`` (schema ``audit.resume/1``): does a run stopped at step K,
saved, loaded in a fresh process and continued to step S match the uninterrupted run?"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from audit.probes.results import Cause, Divergence, KnobTrial, Renderable, RunInfo, build, plain

RESUME_SCHEMA = "audit.resume/1"
RESUME_VERDICTS = ("equivalent", "diverges", "nondeterministic")
#: Stages of the resumed run against the uninterrupted one: ``state`` right after the load,
#: then the stages of each step from K on (contract).
RESUME_STAGES = ("state", "data", "rng", "forward", "backward", "optimizer")
#: Cause sources (contract).
RESUME_SOURCES = ("rng_state", "data_position", "worker_rng", "scheduler", "optimizer_state",
                  "grad_scaler", "buffers", "unknown")


@dataclass
class ResumeDivergence:
    """Where the resumed run first parts from the uninterrupted one."""

    step: int  # 0-based step; for stage "state", K (the state before step K)
    stage: str
    module: Optional[str] = None
    tensor: Optional[str] = None


@dataclass(frozen=True)
class StateDifference:
    """A piece of the state that differs right after the load."""

    piece: str  # parameter | buffer | optimizer state | optimizer settings | scheduler | grad scaler
    name: Optional[str] = None  # the parameter's or buffer's name
    module: Optional[str] = None


@dataclass
class ResumeStep:
    """One step of the timeline around K: each stage of the resumed run against the
    uninterrupted one (``agree`` | ``differ`` | ``missing``; steps before K: ``before``)."""

    step: int
    stages: dict[str, Any] = field(default_factory=dict)
    loss_a: Optional[float] = None  # the uninterrupted run's loss
    loss_c: Optional[float] = None  # the resumed run's loss


@dataclass
class ResumeResult(Renderable):
    """What ``audit resume`` found (``resume.json``); Jupyter shows it as its report.

    ``verdict``: ``"equivalent"``, ``"diverges"`` or ``"nondeterministic"`` (the uninterrupted
    runs already differ). ``first_divergence``: where the resumed run first parts from the
    uninterrupted one (``step``, ``stage``, ...), None when it does not. ``causes``: what the
    checkpoint misses, most likely first (``source`` from the resume sources, ``fix``,
    ``where``)."""

    verdict: str  # RESUME_VERDICTS
    steps: int
    at: int
    first_divergence: Optional[ResumeDivergence] = None
    causes: list[Cause] = field(default_factory=list)  # [Cause], source from RESUME_SOURCES
    schema: str = RESUME_SCHEMA
    seed: int = 0
    device: str = "cpu"
    environment: dict[str, Any] = field(default_factory=dict)
    target: str = ""
    checkpoint: str = "default"  # "target": its own save/load; "default": model + optimizer
    epoch_length: Optional[int] = None  # batches per pass over the data, when known
    auto: bool = False  # steps/at chosen by the tool
    state_differences: list[StateDifference] = field(default_factory=list)  # [StateDifference]
    timeline: list[ResumeStep] = field(default_factory=list)  # [ResumeStep]
    knob_trials: list[KnobTrial] = field(default_factory=list)  # [KnobTrial]
    uninterrupted: Optional[Divergence] = None  # nondeterministic: where two uninterrupted runs part
    run_info: list[RunInfo] = field(default_factory=list)  # [RunInfo]: a, b, c, ...
    detail: dict[str, Any] = field(default_factory=dict)
    error: Optional[str] = None
    seconds: Optional[float] = None

    def to_dict(self) -> dict[str, Any]:
        data = plain(self)
        head = ["schema", "verdict", "steps", "at", "first_divergence", "causes"]
        return {**{k: data[k] for k in head}, **{k: v for k, v in data.items() if k not in head}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ResumeResult":
        data = dict(data)
        fd, un = data.get("first_divergence"), data.get("uninterrupted")
        data["first_divergence"] = build(ResumeDivergence, fd) if fd else None
        data["uninterrupted"] = build(Divergence, un) if un else None
        data["causes"] = [build(Cause, c) for c in data.get("causes", [])]
        data["state_differences"] = [build(StateDifference, x) for x in data.get("state_differences", [])]
        data["timeline"] = [build(ResumeStep, x) for x in data.get("timeline", [])]
        data["knob_trials"] = [build(KnobTrial, x) for x in data.get("knob_trials", [])]
        data["run_info"] = [build(RunInfo, x) for x in data.get("run_info", [])]
        return build(cls, data)

    @property
    def passed(self) -> bool:
        return self.verdict == "equivalent" and self.error is None
