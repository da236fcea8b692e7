"""The result model: plain dataclasses that every audit returns and every reporter reads.

This module is the only thing ``reports/`` imports from ``probes/``, so it must stay free of
torch and of the measuring code. ``to_dict`` gives the JSON documents fixed by the contract
(schemas ``audit.determinism/1`` and ``audit.init/1``); ``from_dict`` reads them back, which
baselines and the gold-file tests rely on.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar

from audit.probes.results.cuda_ops import CudaOpsScan
from audit.probes.results.distributed import (DISTRIBUTED_SOURCES, RankTimeline, ReplicaPoint,
                                              ReplicaRow, Replicas)

DETERMINISM_SCHEMA = "audit.determinism/1"
INIT_SCHEMA = "audit.init/1"

#: The target an audit runs when none is given, and the label results and reports give it.
BUILTIN_TARGET = "audit.example:build"
BUILTIN_LABEL = f"{BUILTIN_TARGET} (built-in)"

#: Stages in the order one training step flows (contract).
STAGES = ("init", "data", "rng", "forward", "backward", "optimizer")
#: Cause sources, in the contract's order.
SOURCES = (
    "unseeded_rng",
    "hash_seed",
    "dataloader",
    "nondeterministic_algorithm",
    "cudnn_benchmark",
    "thread_count",
    *DISTRIBUTED_SOURCES,
    "unknown",
)
#: Finding kinds (contract).
FINDING_KINDS = (
    "vanishing_gradients",
    "exploding_gradients",
    "vanishing_activations",
    "exploding_activations",
    "dead_units",
    "saturation",
    "nonfinite",
)
BUILTIN_SCHEMES = (
    "default",
    "kaiming_normal",
    "kaiming_uniform",
    "xavier_normal",
    "xavier_uniform",
    "orthogonal",
    "lsuv",
)


#: HTML renderers by result type (result -> page), filled by the face (``audit.api``), so a
#: result shows as its report in Jupyter without the result model importing the reporters.
HTML_RENDERERS: dict[type, Callable[[Any], str]] = {}


class Renderable:
    """A result that Jupyter shows as its HTML report once a renderer is registered."""

    def _repr_html_(self) -> Optional[str]:
        render = HTML_RENDERERS.get(type(self))
        return render(self) if render is not None else None


def clean_float(value: Any) -> Optional[float]:
    """A JSON-safe float: non-finite values become ``None`` (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, float):
        return clean_float(obj)
    return obj


def _build(cls: type[T], data: dict[str, Any]) -> T:
    """Build a dataclass from a dict, ignoring unknown keys (forward compatible)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def plain(obj: Any) -> Any:
    """A result dataclass as JSON-able data (for the result modules of other audits)."""
    return _plain(obj)


def build(cls: type[T], data: dict[str, Any]) -> T:
    """A dataclass from a dict, unknown keys ignored (for the result modules of other audits)."""
    return _build(cls, data)


# --------------------------------------------------------------------------- determinism


@dataclass
class Divergence:
    """Where the runs first part (contract's ``first_divergence``)."""

    step: Optional[int]
    stage: str
    module: Optional[str] = None
    tensor: Optional[str] = None
    max_abs_diff: Optional[float] = None
    rank: Optional[int] = None  # distributed runs: the first rank where the runs part


@dataclass
class Cause:
    """Why the runs differ: ``source`` (contract's sources), ``confirmed`` (a rerun with the
    source removed agreed), ``evidence``, ``fix`` and ``where`` (the user's line, if known)."""

    source: str
    confirmed: bool
    evidence: str
    fix: str
    where: Optional[str] = None


@dataclass
class RngEscape:
    """Randomness that the matched seed does not reach, seen where the user's code made it."""

    kind: str  # e.g. "numpy.random.default_rng()"
    where: Optional[str]  # "file.py:12" in the user's code
    count: int = 1
    detail: str = ""
    #: What became of its generators in the runs: "drawn" (from before any seeding call
    #: reached them), "reseeded" (a seeding call with a value came first) or "unused".
    use: str = "drawn"
    made_by: Optional[str] = None  # the library call the line at ``where`` made it through
    holder: Optional[str] = None  # the user's object holding it, which has a seed() method

    @property
    def drawn(self) -> bool:
        return self.use == "drawn"


@dataclass
class SeedCall:
    """A seeding call in the user's code that got different values in matched runs."""

    kind: str  # e.g. "torch.manual_seed"
    where: Optional[str]  # "file.py:12" in the user's code
    values: list[list[Any]] = field(default_factory=list)  # per run, the values seen there (first few)
    in_workers: bool = False  # made in DataLoader worker processes


@dataclass
class KnobTrial:
    """One attribution rerun: a knob, and whether it removed the divergence."""

    knob: str
    source: str
    removed: bool
    steps: int
    detail: str = ""
    pairs: int = 1  # pairs of runs made under the knob
    luck: Optional[float] = None  # chance of their agreement without the knob (None: not estimated)


@dataclass
class LatentSource:
    """A source of nondeterminism that acts only sometimes, present although the runs agreed
    (a DataLoader with workers and ``in_order=False``, cuDNN autotuning, a generator the seed
    does not reach that the compared steps drew from without parting the runs)."""

    source: str  # a cause source (contract vocabulary)
    where: Optional[str]  # "file.py:12" in the user's code
    evidence: str
    fix: str
    tried: str = ""  # what the audit did to make it act, and what came of it


@dataclass
class GrowthPoint:
    """How far apart the runs' parameters are after a step."""

    step: int
    max_abs_diff: Optional[float]
    rel_l2: Optional[float]


@dataclass
class StepAgreement:
    """For one step, each stage's state: ``agree``, ``differ`` or ``missing``."""

    step: Optional[int]  # None for the init row
    stages: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunInfo:
    """What one run process did."""

    index: int
    steps_completed: int
    status: str  # a run status (records.Status): ok, crashed, exited, ended_early, killed, timed_out, interrupted
    message: str = ""
    exit_code: Optional[int] = None
    seconds: Optional[float] = None
    stack: Optional[str] = None  # a run that timed out: the stacks of its threads when it was ended


@dataclass
class NonFinite:
    """The first training step whose loss or gradients were NaN or infinite, in any run."""

    run: int
    step: int
    what: str  # "loss" | "gradient"
    value: Optional[str] = None  # the loss: "nan", "inf" or "-inf"


@dataclass
class DeterminismResult(Renderable):
    """What ``audit determinism`` found (``determinism.json``); Jupyter shows it as its report.

    ``verdict``: ``"deterministic"`` or ``"nondeterministic"``. ``causes``: the :class:`Cause`
    list, most likely first (``source``, ``confirmed``, ``evidence``, ``fix`` and ``where``, a
    place such as ``train.py:12`` or ``cell 3, line 2``). ``first_divergence``: the
    :class:`Divergence` where the runs first part (``step``, ``stage``, ``module``,
    ``tensor``), None when they agree."""

    verdict: str  # "deterministic" | "nondeterministic"
    runs: int
    steps: int
    seed: int
    device: str
    environment: dict[str, Any] = field(default_factory=dict)
    first_divergence: Optional[Divergence] = None
    causes: list[Cause] = field(default_factory=list)  # [Cause]
    schema: str = DETERMINISM_SCHEMA
    target: str = ""
    mode: str = "target"  # "target" | "script"
    run_info: list[RunInfo] = field(default_factory=list)  # [RunInfo]
    timeline: list[StepAgreement] = field(default_factory=list)  # [StepAgreement]
    growth: list[GrowthPoint] = field(default_factory=list)  # [GrowthPoint]
    rng_escapes: list[RngEscape] = field(default_factory=list)  # [RngEscape]
    varying_seeds: list[SeedCall] = field(default_factory=list)  # [SeedCall]
    knob_trials: list[KnobTrial] = field(default_factory=list)  # [KnobTrial]
    latent_sources: list[LatentSource] = field(default_factory=list)  # [LatentSource]
    detail: dict[str, Any] = field(default_factory=dict)  # free-form localization notes
    error: Optional[str] = None  # set when a run crashed and the result is partial
    seconds: Optional[float] = None
    cuda_ops: Optional[CudaOpsScan] = None  # the CUDA op scan of the first run (None: not run)
    cuda_ops_level: str = "warn"  # the gate: "warn" or "fail" on CUDA-nondeterministic ops
    latent_level: str = "warn"  # the gate: "warn" or "fail" on sources that act only sometimes
    nproc: Optional[int] = None  # distributed runs (--nproc N): ranks per run
    replicas: Optional[Replicas] = None  # distributed runs: replica consistency
    rank_timelines: list[RankTimeline] = field(default_factory=list)  # [RankTimeline], distributed runs
    nonfinite: Optional[NonFinite] = None  # the first NaN/inf loss or gradient
    # --across-nodes: [{"run": 0, "node": "...", "environment": {...}}, ...], and when the runs
    # part, how the nodes' environments differ ([{"key", "a", "b"}] as in diff.json).
    nodes: list[dict[str, Any]] = field(default_factory=list)
    environment_changes: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = _plain(self)
        if not self.nodes:  # additive: only runs across nodes carry them
            data.pop("nodes", None)
        if not self.nodes or self.verdict != "nondeterministic":
            data.pop("environment_changes", None)
        if data.get("cuda_ops") is None:
            data.pop("cuda_ops", None)  # additive field: absent where no scan ran
        if self.nproc is None:  # single-process documents keep their shape
            for key in _DISTRIBUTED_KEYS:
                data.pop(key, None)
            if data["first_divergence"]:
                data["first_divergence"].pop("rank", None)
        # Contract order first, extras after.
        head = ["schema", "verdict", "runs", "steps", "seed", "device", "environment",
                "first_divergence", "causes"]
        return {**{k: data[k] for k in head}, **{k: v for k, v in data.items() if k not in head}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DeterminismResult":
        data = dict(data)
        fd = data.get("first_divergence")
        data["first_divergence"] = _build(Divergence, fd) if fd else None
        data["causes"] = [_build(Cause, c) for c in data.get("causes", [])]
        data["run_info"] = [_build(RunInfo, r) for r in data.get("run_info", [])]
        data["timeline"] = [_build(StepAgreement, r) for r in data.get("timeline", [])]
        data["growth"] = [_build(GrowthPoint, r) for r in data.get("growth", [])]
        data["rng_escapes"] = [_build(RngEscape, r) for r in data.get("rng_escapes", [])]
        data["varying_seeds"] = [_build(SeedCall, r) for r in data.get("varying_seeds", [])]
        data["knob_trials"] = [_build(KnobTrial, r) for r in data.get("knob_trials", [])]
        data["cuda_ops"] = CudaOpsScan.from_dict(data.get("cuda_ops"))
        data["replicas"] = _replicas(data.get("replicas"))
        data["rank_timelines"] = [
            RankTimeline(rank=t.get("rank", 0),
                         rows=[_build(StepAgreement, r) for r in t.get("rows", [])])
            for t in data.get("rank_timelines") or []]
        nonfinite = data.get("nonfinite")
        data["nonfinite"] = _build(NonFinite, nonfinite) if nonfinite else None
        data["latent_sources"] = [_build(LatentSource, r) for r in data.get("latent_sources", [])]
        return _build(cls, data)

    @property
    def passed(self) -> bool:
        return self.verdict == "deterministic" and self.error is None


_DISTRIBUTED_KEYS = ("nproc", "replicas", "rank_timelines")


def _replicas(data: Optional[dict[str, Any]]) -> Optional[Replicas]:
    if not data:
        return None
    data = dict(data)
    data["first"] = _build(ReplicaPoint, data["first"]) if data.get("first") else None
    data["grid"] = [_build(ReplicaRow, r) for r in data.get("grid") or []]
    return _build(Replicas, data)


# --------------------------------------------------------------------------- init


@dataclass
class LayerStats:
    """Per module with parameters, in execution order (contract fields first)."""

    name: str
    type: str
    depth: int
    grad_norm: Optional[float] = None
    weight_norm: Optional[float] = None
    act_mean: Optional[float] = None
    act_std: Optional[float] = None
    dead_fraction: Optional[float] = None
    saturated_fraction: Optional[float] = None
    grad_weight_ratio: Optional[float] = None
    output_grad_norm: Optional[float] = None
    nonlinearity: str = "linear"
    nonfinite: bool = False
    output_grad_rms: Optional[float] = None  # output_grad_norm / sqrt(output elements)
    weight_layer: bool = False  # a Conv*/ConvTranspose*/Linear whose weight the schemes set
    units: Optional[int] = None  # units (channels/features) the dead fraction counts over


@dataclass
class Finding:
    kind: str
    layer: Optional[str]
    value: Optional[float]
    threshold: Optional[float]
    message: str


@dataclass
class SchemeResult:
    name: str
    verdict: str  # "healthy" | "unhealthy"
    layers: list[LayerStats] = field(default_factory=list)  # [LayerStats]
    findings: list[Finding] = field(default_factory=list)  # [Finding]
    loss: list[float] = field(default_factory=list)  # [float]
    score: Optional[float] = None
    seconds: Optional[float] = None
    error: Optional[str] = None
    # The loss curve of each init seed (seed 0's is ``loss``), where more than one was run.
    loss_seeds: Optional[list[list[float]]] = None  # [[float]]
    # The fitted end-to-end depth trends of the first step (last weight layer / first) of the
    # output std and of the output-gradient norm; shown in the table, not part of init.json.
    depth_trend: Optional[DepthTrend] = None


@dataclass
class DepthTrend:
    activations: Optional[float] = None  # fitted output std, last weight layer / first
    gradients: Optional[float] = None  # fitted output-gradient norm, last / first

    @property
    def fold(self) -> float:
        """The larger factor by which either signal changes through depth (>= 1; 1 where no
        trend could be fitted)."""
        folds = [max(v, 1.0 / v) for v in (self.activations, self.gradients)
                 if v is not None and math.isfinite(v) and v > 0]
        return max(folds, default=1.0)


@dataclass
class Recommendation:
    """How the recommended scheme was chosen (``init.json``'s ``recommendation``)."""

    scheme: Optional[str]
    reason: str = ""
    kept_own: bool = False  # the model's own init kept: nothing beats it beyond noise
    against: Optional[str] = None  # the closest candidate compared with the model's own init
    seeds: int = 1  # init seeds behind the comparison
    delta: Optional[float] = None  # candidate minus own, early loss, mean over seeds
    ci: Optional[list[Optional[float]]] = None  # [low, high] of delta, paired by seed
    level: float = 0.99  # the interval's confidence level

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in _plain(self).items() if k != "level"}


@dataclass
class InitResult(Renderable):
    """What ``audit init`` found (``init.json``); Jupyter shows it as its report.

    ``verdict``: ``"healthy"`` or ``"unhealthy"``, for the model's own init (scheme
    ``default``). ``recommended``: the scheme to use; ``recommendation`` says why.
    ``schemes``: a :class:`SchemeResult` per scheme tried (its layers, ``findings`` and loss);
    :meth:`scheme` finds one by name."""

    verdict: str  # of the "default" scheme
    recommended: Optional[str]
    schemes: list[SchemeResult] = field(default_factory=list)  # [SchemeResult]
    schema: str = INIT_SCHEMA
    mode: str = "target"  # "script": the script's command is the target
    target: str = ""
    steps: int = 0
    seed: int = 0
    device: str = "cpu"
    environment: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, Any] = field(default_factory=dict)
    recommendation_code: str = ""
    recommendation_reason: str = ""
    error: Optional[str] = None
    seconds: Optional[float] = None
    recommendation: Optional[Recommendation] = None

    def to_dict(self) -> dict[str, Any]:
        data = _plain(self)
        for scheme in data["schemes"]:
            scheme.pop("depth_trend", None)
        data["recommendation"] = self.recommendation.to_dict() if self.recommendation else None
        head = ["schema", "verdict", "recommended", "schemes", "recommendation"]
        return {**{k: data[k] for k in head}, **{k: v for k, v in data.items() if k not in head}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "InitResult":
        data = dict(data)
        schemes = []
        for s in data.get("schemes", []):
            s = dict(s)
            s["layers"] = [_build(LayerStats, x) for x in s.get("layers", [])]
            s["findings"] = [_build(Finding, x) for x in s.get("findings", [])]
            schemes.append(_build(SchemeResult, s))
        data["schemes"] = schemes
        if isinstance(data.get("recommendation"), dict):
            data["recommendation"] = _build(Recommendation, data["recommendation"])
        return _build(cls, data)

    def scheme(self, name: str) -> Optional[SchemeResult]:
        return next((s for s in self.schemes if s.name == name), None)

    @property
    def passed(self) -> bool:
        return self.verdict == "healthy" and self.error is None


# --------------------------------------------------------------------------- the gate


@dataclass
class Check:
    """One pass/fail statement the CI gate makes (a JUnit testcase, a summary row)."""

    audit: str  # "determinism" | "init"
    name: str  # e.g. "runs agree"
    passed: bool
    message: str = ""
    fix: str = ""
    where: Optional[str] = None  # "file.py:12" when the finding has a place in user code
    skipped: bool = False


@dataclass
class AuditSummary:
    """One audit's verdict as the gate's index page and summary show it."""

    audit: str
    status: str  # "pass" | "fail" | "error"
    title: str  # the headline
    text: str = ""  # one sentence for the index page
    note_label: str = ""  # e.g. "recommended", shown with note_code as code
    note_code: str = ""


@dataclass
class GateResult:
    """What ``audit check`` ran: the checks drawn from each audit and each audit's summary."""

    checks: list[Check] = field(default_factory=list)  # [Check]
    reports: dict[str, str] = field(default_factory=dict)  # audit name -> report file name
    summaries: dict[str, AuditSummary] = field(default_factory=dict)  # audit name -> AuditSummary
    baseline_regressions: list[str] = field(default_factory=list)  # [str]

    @property
    def passed(self) -> bool:
        return all(c.passed or c.skipped for c in self.checks)
