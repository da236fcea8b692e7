"""The knobs that attribution flips one at a time, and what a run observes about its setup.

Each :class:`Knob` removes one kind of nondeterminism if that kind is the cause: part of it is
the environment a fresh process starts with (``env``), part is applied inside the process
before the target is built and again before training (:func:`apply`), so a target that sets
``cudnn.benchmark = True`` itself cannot undo it. :func:`observe` records, in every run, the
places in the user's code that set the flags a cause's fix will point at.
"""
from __future__ import annotations

import functools
import inspect
import os
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import torch

from audit.probes.run import rng_escape
from audit.probes.run.environment import describe, thread_variables
from audit.probes.run.processes import place


@dataclass(frozen=True)
class Knob:
    name: str
    source: str  # the cause it proves (contract vocabulary)
    env: dict[str, Any] = field(default_factory=dict)
    description: str = ""


KNOBS = {
    k.name: k
    for k in (
        Knob("seed_escapes", "unseeded_rng",
             description="every generator made without a seed (or from the clock) seeded from "
                         "the place that made it"),
        Knob("pin_seeds", "unseeded_rng",
             description="every seeding call whose value differed between the runs given a "
                         "fixed value per call site"),
        Knob("pythonhashseed", "hash_seed", {"PYTHONHASHSEED": "0"},
             description="PYTHONHASHSEED=0 in every run"),
        Knob("dataloader", "dataloader",
             description="DataLoaders loading in the main process (num_workers=0), in order"),
        Knob("cudnn_benchmark_off", "cudnn_benchmark",
             description="torch.backends.cudnn.benchmark = False"),
        Knob("deterministic_algorithms", "nondeterministic_algorithm",
             {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"},
             description="torch.use_deterministic_algorithms(True), cuDNN deterministic, "
                         "benchmark off and CUBLAS_WORKSPACE_CONFIG=:4096:8 (uninitialized "
                         "memory not filled)"),
        Knob("fill_uninitialized_memory", "nondeterministic_algorithm",
             {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"},
             description="deterministic algorithms and torch.empty() memory filled "
                         "(torch.utils.deterministic.fill_uninitialized_memory)"),
        Knob("one_thread", "thread_count",
             {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
             description="one CPU thread (torch.set_num_threads(1), OMP_NUM_THREADS=1)"),
    )
}

_observed: dict[str, Any] = {"cudnn_benchmark": None, "loaders": [], "threads": None,
                   "deterministic_off": None}
_pinned: dict[str, Any] = {}


def _caller() -> Optional[str]:
    return rng_escape.user_frame(rng_escape.library_dirs())


def observe() -> None:
    """Record where the user's code turns on cuDNN autotuning, makes multi-worker or
    out-of-order DataLoaders, sets thread counts, or turns deterministic mode off."""
    _observe_cudnn_benchmark()
    _observe_loaders()
    _observe_threads_and_determinism()


def _observe_cudnn_benchmark() -> None:
    cudnn_cls = type(torch.backends.cudnn)
    # the cudnn module's class, patched to observe the user's settings
    prop = cudnn_cls.__dict__.get("benchmark")  # type: ignore[attr-defined]
    if prop is None or getattr(cudnn_cls, "_audit_observed", False):
        return

    class Benchmark:
        def __get__(self, obj, objtype=None):
            return prop.__get__(obj, objtype)

        def __set__(self, obj, value):
            if "cudnn_benchmark" in _pinned:
                value = _pinned["cudnn_benchmark"]
            elif value:
                _observed["cudnn_benchmark"] = _caller()
            prop.__set__(obj, value)

    cudnn_cls.benchmark = Benchmark()  # type: ignore[attr-defined]  # patched to observe the user's settings
    cudnn_cls._audit_observed = True  # type: ignore[attr-defined]  # our mark on the patched class


def _loader_arguments(arguments: dict[str, Any]) -> None:
    """A DataLoader's arguments under the ``jitter`` and ``dataloader`` knobs, in place."""
    workers = arguments.get("num_workers", 0)
    if "jitter" in _pinned and workers and "dataloader" not in _pinned:
        from audit.probes.run.jitter import JitterInit

        arguments["worker_init_fn"] = JitterInit(arguments.get("worker_init_fn"))
    if "dataloader" in _pinned:
        arguments["num_workers"] = 0
        if "in_order" in arguments:
            arguments["in_order"] = True
        if arguments.get("persistent_workers"):
            arguments["persistent_workers"] = False
        arguments["prefetch_factor"] = None


def _observe_loaders() -> None:
    loader_cls = torch.utils.data.DataLoader
    if getattr(loader_cls, "_audit_observed", False):
        return
    original_init = loader_cls.__init__
    params = inspect.signature(original_init).parameters

    def init(self, *args, **kwargs):
        bound = inspect.signature(original_init).bind(self, *args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        arguments.pop("self")
        extra = arguments.pop("kwargs", {}) if "kwargs" in params else {}
        workers = arguments.get("num_workers", 0)
        in_order = arguments.get("in_order", True)
        if workers or not in_order:
            _observed["loaders"].append({"where": _caller(), "num_workers": workers,
                                         "in_order": in_order})
        _loader_arguments(arguments)
        original_init(self, **arguments, **extra)

    loader_cls.__init__ = init  # type: ignore[method-assign]  # patched to observe the user's DataLoader arguments
    loader_cls._audit_observed = True  # type: ignore[attr-defined]  # our mark on the patched class


def _observe_threads_and_determinism() -> None:
    if getattr(torch, "_audit_threads_observed", False):
        return
    original_set = torch.set_num_threads

    def set_num_threads(n):
        _observed["threads"] = {"where": _caller(), "threads": n}
        if "threads" in _pinned:
            return None
        return original_set(n)

    torch.set_num_threads = set_num_threads
    original_det = torch.use_deterministic_algorithms

    @functools.wraps(original_det)  # keeps torch's docstring (the CUDA op table reads it)
    def use_deterministic_algorithms(mode, *args, **kwargs):
        if not mode:
            _observed["deterministic_off"] = _caller()
        if "deterministic" in _pinned:
            return original_det(True, warn_only=True)
        return original_det(mode, *args, **kwargs)

    torch.use_deterministic_algorithms = use_deterministic_algorithms
    torch._audit_threads_observed = True  # type: ignore[attr-defined]  # our marks on the patched module
    # our marks on the patched module
    torch._audit_original_set_num_threads = original_set  # type: ignore[attr-defined]
    torch._audit_original_deterministic = original_det  # type: ignore[attr-defined]  # our marks on the patched module


def observed() -> dict[str, Any]:
    return dict(_observed, loaders=list(_observed["loaders"]))


def jitter_workers() -> None:
    """From now on, DataLoaders with workers get random delays before each fetch
    (:mod:`probes.run.jitter`): an order that depends on worker timing shows itself."""
    _pinned["jitter"] = True


def apply(names: list[str], escape_log: Optional[str] = None, pin_sites: Sequence[str] = ()) -> None:
    """Apply the in-process part of the named knobs (their env part is set by the caller);
    ``pin_sites`` are the seeding calls' places the ``pin_seeds`` knob pins."""
    unknown = [n for n in names if n not in KNOBS]
    if unknown:
        raise ValueError(f"unknown knob(s) {unknown}; known: {sorted(KNOBS)}")
    if "seed_escapes" in names:
        rng_escape.install(escape_log, pin=True)
    if "pin_seeds" in names:
        rng_escape.pin_sites(pin_sites)
    if "dataloader" in names:
        _pinned["dataloader"] = True
    if "one_thread" in names:
        getattr(torch, "_audit_original_set_num_threads", torch.set_num_threads)(1)
        _pinned["threads"] = 1
    if "cudnn_benchmark_off" in names or "deterministic_algorithms" in names or \
            "fill_uninitialized_memory" in names:
        _pinned["cudnn_benchmark"] = False
        torch.backends.cudnn.benchmark = False
    if "deterministic_algorithms" in names or "fill_uninitialized_memory" in names:
        _pinned["deterministic"] = True
        getattr(torch, "_audit_original_deterministic", torch.use_deterministic_algorithms)(
            True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        # not in torch's stubs
        torch.utils.deterministic.fill_uninitialized_memory = "fill_uninitialized_memory" in names  # type: ignore[attr-defined]


def flags() -> dict[str, Any]:
    """The process's determinism-relevant settings, for the report's environment section."""
    return {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        # not in torch's stubs
        "fill_uninitialized_memory": bool(torch.utils.deterministic.fill_uninitialized_memory),  # type: ignore[attr-defined]
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "num_threads": torch.get_num_threads(),
        "PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED"),
        "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        **thread_variables(),
    }


def module_sources(model: torch.nn.Module) -> dict[str, Any]:
    """``file:line`` (``cell N, line L``) of each user-defined module's forward (not torch's own
    modules)."""
    out = {}
    for name, module in model.named_modules():
        cls = type(module)
        if cls.__module__.startswith("torch"):
            continue
        code = getattr(inspect.unwrap(cls.forward), "__code__", None)
        if code is not None:  # a notebook cell's code has a file name but no file
            out[name] = place(code.co_filename, code.co_firstlineno)
    return out


def describe_run(device: Union[str, torch.device]) -> dict[str, Any]:
    """What a run records of its place: the machine and versions
    (:func:`audit.probes.run.environment.describe`) and the determinism flags in force."""
    return {**describe(device), "flags": flags()}
