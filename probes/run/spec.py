"""What a parent process tells a fresh child run: typed specs, written and read in one place.

:func:`write_spec` and :func:`read_spec` are the one pair that turns a spec into its JSON file
and back (nested specs included). The children import this module before torch: it stays light.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Optional, TypeVar

#: Field metadata of what only the parent keeps (not written for the child).
PARENT_ONLY = {"parent_only": True}


@dataclass
class LockstepSpec:
    """A replay partner: the folder the pair exchanges tensors through, and its role."""

    folder: str
    role: str  # "ref" | "cmp"
    rename: Optional[dict[str, Any]] = None  # audit diff: the ref's names in the partner's naming


@dataclass
class DistSpec:
    """One rank of a distributed run: how many ranks, and seconds a collective may wait."""

    nproc: int
    timeout: float = 120.0
    port: Optional[int] = None  # script mode: the run's rendezvous port (the script's is moved)
    spawned: bool = False  # a torch.multiprocessing child of the script's own process


@dataclass
class ResumeSpec:
    """One role of ``audit resume``: ``a`` uninterrupted (saves at K) or ``c`` resumed."""

    role: str
    folder: str  # where the checkpoint is saved and loaded
    at: Optional[int] = None  # K; None: the session chooses it
    knobs: list[str] = field(default_factory=list)  # the pieces the tool restores itself


@dataclass
class RunSpec:
    """One traced run (target mode: :mod:`audit.probes.child.worker`; script mode:
    :mod:`audit.probes.child.bootstrap`)."""

    name: str
    trace: str  # the trace file (JSON lines) the run writes
    steps: int
    seed: int = 0
    target: Optional[str] = None
    device: str = "auto"
    input_shape: Optional[list[Any]] = None
    num_classes: Optional[int] = None
    escape_log: Optional[str] = None
    seed_log: Optional[str] = None
    log: Optional[str] = None  # the run's stdout and stderr
    knobs: list[str] = field(default_factory=list)
    detail: bool = False  # module-level fingerprints (the replay)
    lockstep: Optional[LockstepSpec] = None
    script: Optional[list[str]] = None  # script mode: ["python", "train.py", ...]
    pin_sites: list[str] = field(default_factory=list)  # seeding calls the pin_seeds knob pins
    stdin: str = "file"  # script mode: "file", or "terminal" (reading it says how to give input)
    jitter: bool = False  # vary DataLoader worker timing
    cuda_ops: bool = False  # scan the ops for CUDA nondeterminism after the steps
    resume: Optional[ResumeSpec] = None
    dist: Optional[DistSpec] = None
    spec_path: str = ""  # where the spec is written
    rank_specs: list[Any] = field(default_factory=list, metadata=PARENT_ONLY)  # a distributed run's


@dataclass
class VarianceRunSpec:
    """One plain run of ``audit variance`` / ``audit compare`` (:mod:`audit.probes.child.variance`)."""

    seeds: dict[str, Any]  # init/data/augment/dropout -> seed
    base_seed: int
    steps: int
    target: Optional[str] = None
    device: str = "auto"
    input_shape: Optional[list[Any]] = None
    num_classes: Optional[int] = None
    environment: bool = False  # also describe the machine
    out: str = ""  # the JSON report the run writes


@dataclass
class SchemeRunSpec:
    """One scheme of ``audit init`` in script mode (:mod:`audit.probes.child.init_scheme`)."""

    scheme: str
    steps: int
    result: str  # the JSON file the run writes its measurements to
    device: str = "auto"
    saturation_margin: float = 0.01
    # 0: the script's own init (and the scheme drawn from the script's random stream); more:
    # the own init redrawn and the scheme drawn from this seed of the audit's (``seed``).
    init_seed: int = 0
    seed: int = 0


Spec = TypeVar("Spec")


def to_dict(spec: Any) -> dict[str, Any]:
    """The spec as JSON-able data, without what only the parent keeps."""
    out = {}
    for f in dataclasses.fields(spec):
        if f.metadata.get("parent_only"):
            continue
        value = getattr(spec, f.name)
        out[f.name] = to_dict(value) if dataclasses.is_dataclass(value) else value
    return out


def from_dict(kind: type[Spec], data: dict[str, Any]) -> Spec:
    """A ``kind`` spec from :func:`to_dict`'s data (nested specs rebuilt; unknown keys refused)."""
    hints = typing.get_type_hints(kind)
    values = {}
    for name, value in data.items():
        nested = _spec_type(hints.get(name))
        values[name] = from_dict(nested, value) if nested and isinstance(value, dict) else value
    return kind(**values)


def _spec_type(hint: Any) -> Optional[type]:
    """The dataclass a field holds (``Optional[X]`` or ``X``), else None."""
    for candidate in (hint, *typing.get_args(hint)):
        if isinstance(candidate, type) and dataclasses.is_dataclass(candidate):
            return candidate
    return None


def write_spec(spec: Any, path: str) -> None:
    """Write ``spec`` for a child at ``path`` (a :class:`RunSpec` also learns its path)."""
    if isinstance(spec, RunSpec):
        spec.spec_path = path
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(to_dict(spec), fh)


def read_spec(kind: type[Spec], path: str) -> Spec:
    """The ``kind`` spec :func:`write_spec` wrote at ``path``."""
    with open(path, encoding="utf-8") as fh:
        return from_dict(kind, json.load(fh))
