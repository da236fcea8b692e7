"""pytest plugin: the ``determinism_audit`` and ``init_audit`` fixtures.

Registered through the ``pytest11`` entry point, so installing ``audit`` makes the fixtures
available in every test session; without installing, add ``-p audit.pytest_plugin`` or
``pytest_plugins = ["audit.pytest_plugin"]`` in a ``conftest.py``. Loading the plugin imports
nothing heavy: torch and the audits are imported when a fixture is first called.

Each fixture is a function taking the target and the audit's options; it runs the audit,
returns the result (:class:`probes.results.DeterminismResult` / :class:`~probes.results.InitResult`)
and fails the test with the same explanation ``audit determinism`` / ``audit init`` print when
any of the audit's checks fails (the checks ``audit check`` makes: an unseeded generator fails
a determinism audit even when the runs agreed). ``fail=False`` returns the result without
failing. The options are not read from ``[tool.audit]``: a test says what it runs.

::

    def test_training_is_reproducible(determinism_audit):
        determinism_audit("train.py:build", steps=5)

    def test_init_is_healthy(init_audit):
        result = init_audit(MyNet(), input_shape=(3, 32, 32), num_classes=10, steps=3)
        assert result.recommended

Targets:

* ``determinism_audit`` trains in fresh processes, so it needs a target it can name there: a
  spec string (``"path/to/file.py:NAME"``, relative to the working folder or to the test
  file, or ``"package.module:NAME"``), or a module-level function (one defined in a test file
  is named by its file; one in an importable module by ``module:qualname``, with the folder it
  is imported from passed on to the runs). Lambdas, closures and ``nn.Module`` objects cannot
  cross a process boundary and are refused with a message saying what to pass instead.
* ``init_audit`` runs in the test's own process and takes any zero-argument callable, an
  ``nn.Module`` object (synthetic data, shaped by ``input_shape`` / ``num_classes`` or
  inferred), or a spec string.
"""
from __future__ import annotations

import os
import re
import sys
from typing import Any, Optional

import pytest

_TEST_FILE = re.compile(r"^(test_.*|.*_test|conftest)\.py$")


class AuditTargetError(ValueError):
    """The fixture cannot use what it was given as a target."""


# --------------------------------------------------------------------------- naming targets


def _is_module(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def _module_root(module) -> Optional[str]:
    """The folder a module is imported from (the parent of its top-level package)."""
    path = getattr(module, "__file__", None)
    if not path:
        return None
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.basename(path).startswith("__init__."):
        folder = os.path.dirname(folder)
    for _ in range(module.__name__.count(".")):
        folder = os.path.dirname(folder)
    return folder


def _resolve_spec(spec: str, test_dir: Optional[str]) -> str:
    from audit.probes.target import TargetError, split_spec

    try:
        where, name = split_spec(spec)
    except TargetError as exc:
        raise AuditTargetError(str(exc)) from None
    if where.endswith(".py") or "/" in where or os.sep in where:
        if not os.path.isabs(where) and not os.path.isfile(where) and test_dir:
            beside = os.path.join(test_dir, where)
            if os.path.isfile(beside):
                return f"{os.path.abspath(beside)}:{name}"
    return spec


def process_target(target: Any, test_dir: Optional[str] = None) -> tuple[str, Optional[str]]:
    """``(spec, extra sys.path folder)`` naming ``target`` for a fresh process."""
    if isinstance(target, str):
        return _resolve_spec(target, test_dir), None
    if _is_module(target):
        raise AuditTargetError(
            "determinism_audit runs the target in fresh processes and cannot send them an "
            f"nn.Module object ({type(target).__name__}); pass the module-level function that "
            "builds it, or a 'file.py:NAME' string")
    if not callable(target):
        raise AuditTargetError(
            f"determinism_audit needs a target: a module-level function or a 'file.py:NAME' / "
            f"'package.module:NAME' string, got an object of type {type(target).__name__}")
    name = getattr(target, "__name__", "")
    qualname = getattr(target, "__qualname__", name)
    if name == "<lambda>" or "<locals>" in qualname or "<lambda>" in qualname:
        kind = "a lambda" if "<lambda>" in qualname else "a function defined inside another"
        raise AuditTargetError(
            f"determinism_audit cannot use {kind} ({qualname}): each run is a fresh process "
            "that must import the target by name; define it at module level (in the test "
            "file is fine) or pass a 'file.py:NAME' string")
    module = sys.modules.get(getattr(target, "__module__", None) or "")
    if module is None:
        raise AuditTargetError(f"determinism_audit cannot tell which module defines {qualname}; "
                               "pass a 'file.py:NAME' string")
    obj = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if obj is not target:
        raise AuditTargetError(
            f"{module.__name__}.{qualname} does not name this object (is it decorated or "
            "reassigned?); pass a 'file.py:NAME' string")
    import inspect

    try:
        source = inspect.getsourcefile(target)
    except TypeError:
        source = None
    if module.__name__ == "__main__" or (source and _TEST_FILE.match(os.path.basename(source))):
        if not source:
            raise AuditTargetError(f"cannot find the file that defines {qualname}; pass a "
                                   "'file.py:NAME' string")
        return f"{os.path.abspath(source)}:{qualname}", None
    return f"{module.__name__}:{qualname}", _module_root(module)


def _test_dir(request) -> Optional[str]:
    path = getattr(request.node, "path", None) or getattr(request, "fspath", None)
    return os.path.dirname(str(path)) if path else None


# --------------------------------------------------------------------------- running


def _failure(audit: str, result, summary: str) -> Optional[str]:
    """The explanation to fail the test with, or None when every check passed."""
    from audit.gate import checks_for

    failed = [c for c in checks_for(audit, result) if not c.passed and not c.skipped]
    if not failed and result.error is None:
        return None
    lines = [summary.rstrip("\n"), "", "Failed checks:"]
    for check in failed:
        line = f"  - {check.name}"
        if check.where:
            line += f" (at {check.where})"
        lines.append(line)
    return "\n".join(lines)


def _write(out: Optional[str], audit: str, result) -> Optional[str]:
    if not out:
        return None
    from audit.gate import _write_audit_files

    os.makedirs(out, exist_ok=True)
    return _write_audit_files(out, audit, result)["html"]


def _defaults(audit: str) -> dict:
    from audit.commands import DEFAULTS

    return {**DEFAULTS["common"], **DEFAULTS[audit]}


def _run_determinism(request, target, *, runs: Optional[int] = None, steps: Optional[int] = None,
                     seed: Optional[int] = None, device: Optional[str] = None,
                     jobs: Optional[int] = None, attribution: Optional[bool] = None,
                     input_shape=None, num_classes: Optional[int] = None,
                     out: Optional[str] = None, fail: bool = True):
    from audit.probes.determinism.orchestrate import DeterminismOptions, TargetFailed, audit_determinism
    from audit.reports.terminal import determinism_summary

    d = _defaults("determinism")
    problem = None
    try:
        spec, extra_path = process_target(target, _test_dir(request))
    except AuditTargetError as exc:
        problem = str(exc)
    if problem is not None:  # failed outside the except block: no chained traceback
        pytest.fail(problem, pytrace=False)
    opts = DeterminismOptions(
        target=spec, runs=d["runs"] if runs is None else runs,
        steps=d["steps"] if steps is None else steps, seed=d["seed"] if seed is None else seed,
        device=d["device"] if device is None else device, jobs=d["jobs"] if jobs is None else jobs,
        attribute=d["attribution"] if attribution is None else attribution,
        input_shape=list(input_shape) if input_shape else None, num_classes=num_classes,
        cwd=os.getcwd())
    if opts.runs < 2:
        pytest.fail("determinism_audit: runs must be 2 or more: a comparison needs two runs",
                    pytrace=False)
    saved = os.environ.get("PYTHONPATH")
    if extra_path:
        os.environ["PYTHONPATH"] = extra_path + (os.pathsep + saved if saved else "")
    try:
        result = audit_determinism(opts)
    except TargetFailed as exc:
        problem = f"audit determinism: {exc}"
    finally:
        if extra_path:
            if saved is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = saved
    if problem is not None:
        pytest.fail(problem, pytrace=False)
    report = _write(out, "determinism", result)
    message = _failure("determinism", result, determinism_summary(result, report))
    if message and fail:
        pytest.fail(message, pytrace=False)
    return result


def _run_init(target, *, steps: Optional[int] = None, schemes=None, seed: Optional[int] = None,
              device: Optional[str] = None, thresholds: Optional[dict] = None,
              input_shape=None, num_classes: Optional[int] = None, out: Optional[str] = None,
              fail: bool = True):
    from audit.probes.target import TargetError, call_target, load_target, normalize
    from audit.probes.worker import resolve_device, seed_everything
    from audit.probes.init.engine import run_init
    from audit.reports.terminal import init_summary

    d = _defaults("init")
    steps = d["steps"] if steps is None else steps
    seed = d["seed"] if seed is None else seed
    if isinstance(schemes, str):
        schemes = [s.strip() for s in schemes.split(",") if s.strip()]
    options = dict(input_shape=tuple(input_shape) if input_shape else None,
                   num_classes=num_classes, seed=seed, batches=max(steps, 1))
    problem = None
    try:
        dev = resolve_device(d["device"] if device is None else device)
        seed_everything(seed)
        if isinstance(target, str):
            name = target
            setup = load_target(target, **options)
        elif _is_module(target):
            name = f"{type(target).__name__} object"
            setup = normalize(target, name, **options)
        elif callable(target):
            name = getattr(target, "__qualname__", None) or repr(target)
            setup = normalize(call_target(target, name), name, **options)
        else:
            raise TargetError(f"init_audit needs an nn.Module, a zero-argument callable or a "
                              f"'file.py:NAME' string, got an object of type "
                              f"{type(target).__name__}")
        result = run_init(setup, schemes=schemes, steps=steps, seed=seed, device=str(dev),
                          thresholds=thresholds or None, target=name)
    except (TargetError, RuntimeError, ValueError) as exc:
        problem = f"audit init: {exc}"
    if problem is not None:
        pytest.fail(problem, pytrace=False)
    report = _write(out, "init", result)
    message = _failure("init", result, init_summary(result, report))
    if message and fail:
        pytest.fail(message, pytrace=False)
    return result


@pytest.fixture
def determinism_audit(request):
    """``determinism_audit(target, *, runs=2, steps=20, seed=0, device="auto", jobs=1,
    attribution=True, input_shape=None, num_classes=None, out=None, fail=True)``: train the
    target in fresh processes under matched seeds and compare. Returns the
    ``DeterminismResult``; fails the test with the audit's explanation when a check fails
    (``fail=False`` only returns). ``out`` also writes ``determinism.json``/``.html`` there."""

    def run(target, **options):
        return _run_determinism(request, target, **options)

    return run


@pytest.fixture
def init_audit():
    """``init_audit(target, *, steps=5, schemes=None, seed=0, device="auto", thresholds=None,
    input_shape=None, num_classes=None, out=None, fail=True)``: measure the target's own init
    and the schemes in this process. Returns the ``InitResult``; fails the test with the
    audit's explanation when a check fails (``fail=False`` only returns)."""

    def run(target, **options):
        return _run_init(target, **options)

    return run
