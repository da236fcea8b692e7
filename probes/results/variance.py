"""The results of ``audit variance`` (``variance.json``) and ``audit compare`` (``compare.json``).

Plain dataclasses, free of torch and of the measuring code, as the rest of the result model.
``to_dict`` puts the contract's fields first (schemas ``audit.variance/1`` and
``audit.compare/1``); the fields after them are documented additions. ``from_dict`` reads a
document back (baselines, gold files).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from audit.probes.results import Renderable, build, plain
from audit.probes.results.records import Status

VARIANCE_SCHEMA = "audit.variance/1"
COMPARE_SCHEMA = "audit.compare/1"
#: The sources of randomness, varied one at a time, then ``all`` together (contract order).
VARIANCE_SOURCES = ("init", "data", "augment", "dropout")
ALL = "all"
#: Compare verdicts (contract).
COMPARE_VERDICTS = ("better", "worse", "no_difference")
DIRECTIONS = ("lower", "higher")
#: Run statuses: ``ok`` counted; the others are reported and left out of the statistics.
RUN_STATUSES = (Status.OK, Status.CRASHED, Status.KILLED, Status.NONFINITE, Status.TARGET_ERROR)


@dataclass
class RunRecord:
    """One fresh-process training run."""

    group: str  # a source name or "all" (variance); "a" or "b" (compare)
    seed: int  # the varied seed (for "all": every source's seed)
    status: str  # one of RUN_STATUSES
    metrics: dict[str, float] = field(default_factory=dict)  # name -> float
    message: str = ""
    seconds: Optional[float] = None
    where: Optional[str] = None  # "file.py:12" in the user's code, for a crash


@dataclass
class Routing:
    """How one source's seed reaches the target's randomness, and whether it can be varied
    on its own."""

    source: str
    how: str
    separable: bool = True
    note: str = ""


@dataclass
class SourceStats:
    """One metric under one source: each seed's value (contract: values, mean, std)."""

    values: list[float] = field(default_factory=list)  # [float], finished runs, seed order
    mean: Optional[float] = None
    std: Optional[float] = None
    seeds: list[int] = field(default_factory=list)  # [int], the seed of each value
    min: Optional[float] = None
    max: Optional[float] = None
    q1: Optional[float] = None
    q3: Optional[float] = None
    iqr: Optional[float] = None
    std_ci: list[Optional[float]] = field(default_factory=lambda: [None, None])  # bootstrap CI of std
    share: Optional[float] = None  # var(source) / var(all)
    excluded: int = 0  # runs of this source that crashed or gave a non-finite value


@dataclass
class MetricVariance:
    direction: str  # "lower" | "higher" is better
    sources: dict[str, SourceStats] = field(default_factory=dict)  # source -> SourceStats


@dataclass
class VarianceResult(Renderable):
    """What ``audit variance`` measured (``variance.json``); Jupyter shows it as its report.

    ``metrics``: metric name -> :class:`MetricVariance`, whose ``sources`` map each source of
    randomness varied alone (``init``, ``data``, ``augment``, ``dropout``) and ``all`` together
    to the metric's values, mean and std over the seeds. ``dominant``: metric -> the source
    with the largest spread. ``controlled``: did identical seeds give identical metrics?"""

    seeds: int
    steps: int
    metrics: dict[str, MetricVariance] = field(default_factory=dict)  # metric name -> MetricVariance
    schema: str = VARIANCE_SCHEMA
    seed: int = 0
    target: str = ""
    device: str = "cpu"
    sources: list[str] = field(default_factory=list)  # the sources varied, contract order
    routing: list[Routing] = field(default_factory=list)  # [Routing]
    controlled: Optional[bool] = None  # did identical seed settings give identical metrics?
    control_spread: Optional[float] = None  # largest metric range over identical settings
    dominant: dict[str, str] = field(default_factory=dict)  # metric -> source with the largest std
    runs: list[RunRecord] = field(default_factory=list)  # [RunRecord]
    confidence: float = 0.95
    environment: dict[str, Any] = field(default_factory=dict)
    error: Optional[str] = None
    seconds: Optional[float] = None

    def to_dict(self) -> dict[str, Any]:
        data = plain(self)
        head = ["schema", "seeds", "steps", "metrics"]
        return {**{k: data[k] for k in head}, **{k: v for k, v in data.items() if k not in head}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VarianceResult":
        data = dict(data)
        metrics = {}
        for name, m in (data.get("metrics") or {}).items():
            m = dict(m)
            m["sources"] = {s: build(SourceStats, v) for s, v in (m.get("sources") or {}).items()}
            metrics[name] = build(MetricVariance, m)
        data["metrics"] = metrics
        data["routing"] = [build(Routing, r) for r in data.get("routing", [])]
        data["runs"] = [build(RunRecord, r) for r in data.get("runs", [])]
        return build(cls, data)

    @property
    def crashed(self) -> list[RunRecord]:
        return [r for r in self.runs if r.status != Status.OK]

    @property
    def passed(self) -> bool:
        return self.error is None and self.controlled is not False


@dataclass
class Variant:
    """One side of a comparison: its target and its value per seed (contract: values)."""

    values: list[float] = field(default_factory=list)  # [float], seed order, paired seeds only
    target: str = ""
    mean: Optional[float] = None
    std: Optional[float] = None


@dataclass
class CompareResult(Renderable):
    """What ``audit compare`` found (``compare.json``); Jupyter shows it as its report.

    ``verdict``: the candidate (``b``) against the baseline (``a``): ``"better"``, ``"worse"``
    or ``"no_difference"`` (the gain is not beyond seed noise). ``deltas``: b - a per paired
    seed; ``ci``, ``p_value``, ``prob_improvement``: how sure; ``seeds_needed``: seeds for a
    conclusive answer at the observed effect."""

    seeds: int
    metric: str
    direction: str
    verdict: str  # one of COMPARE_VERDICTS, for the candidate (b) against the baseline (a)
    a: Variant = field(default_factory=Variant)
    b: Variant = field(default_factory=Variant)
    deltas: list[float] = field(default_factory=list)  # b - a per paired seed
    ci: list[Optional[float]] = field(default_factory=lambda: [None, None])  # BCa CI of mean(deltas)
    p_value: Optional[float] = None  # paired sign-flip permutation test
    prob_improvement: Optional[float] = None
    seeds_needed: Optional[int] = None  # for 80 % power at the observed effect
    schema: str = COMPARE_SCHEMA
    mean_delta: Optional[float] = None
    effect_size: Optional[float] = None  # mean improvement / pooled seed std of the metric
    alpha: float = 0.05
    confidence: float = 0.95
    power: Optional[float] = None  # power of this test at the observed effect
    min_seeds: Optional[int] = None  # fewest seeds with which the test can reach alpha
    paired_seeds: list[int] = field(default_factory=list)  # [int]
    metrics: list[str] = field(default_factory=list)  # every metric the runs reported
    steps: int = 0
    seed: int = 0
    device: str = "cpu"
    runs: list[RunRecord] = field(default_factory=list)  # [RunRecord]
    environment: dict[str, Any] = field(default_factory=dict)
    error: Optional[str] = None
    seconds: Optional[float] = None

    def to_dict(self) -> dict[str, Any]:
        data = plain(self)
        head = ["schema", "seeds", "metric", "direction", "verdict", "a", "b", "deltas", "ci",
                "p_value", "prob_improvement", "seeds_needed"]
        return {**{k: data[k] for k in head}, **{k: v for k, v in data.items() if k not in head}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CompareResult":
        data = dict(data)
        data["a"] = build(Variant, data.get("a") or {})
        data["b"] = build(Variant, data.get("b") or {})
        data["runs"] = [build(RunRecord, r) for r in data.get("runs", [])]
        return build(cls, data)

    @property
    def crashed(self) -> list[RunRecord]:
        return [r for r in self.runs if r.status != Status.OK]

    @property
    def passed(self) -> bool:
        return self.error is None and self.verdict != "worse"
