"""pytest plugin: one fixture per audit kind (``determinism_audit``, ``init_audit``, ...).

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
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Optional

import pytest

if TYPE_CHECKING:  # the plugin loads light; the registry when a fixture runs
    from audit.kinds.base import AuditKind

_TEST_FILE = re.compile(r"^(test_.*|.*_test|conftest)\.py$")


class AuditTargetError(ValueError):
    """The fixture cannot use what it was given as a target."""


# --------------------------------------------------------------------------- naming targets


def _is_module(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def _module_root(module: ModuleType) -> Optional[str]:
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
    from audit.probes.run.target import TargetError, TargetSpec, parse_spec

    try:
        parsed = parse_spec(spec)
    except TargetError as exc:
        raise AuditTargetError(str(exc)) from None
    where = parsed.where
    if where.endswith(".py") or "/" in where or os.sep in where:
        if not os.path.isabs(where) and not os.path.isfile(where) and test_dir:
            beside = os.path.join(test_dir, where)
            if os.path.isfile(beside):
                return str(TargetSpec(os.path.abspath(beside), parsed.name, parsed.kwargs))
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
    obj: Any = module
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


def _test_dir(request: pytest.FixtureRequest) -> Optional[str]:
    path = getattr(request.node, "path", None) or getattr(request, "fspath", None)
    return os.path.dirname(str(path)) if path else None


# --------------------------------------------------------------------------- running


def _failure(kind: AuditKind, result: Any) -> Optional[str]:
    """The explanation to fail the test with, or None when every check passed."""
    failed = kind.failing(result)
    if not failed and getattr(result, "error", None) is None:
        return None
    lines = [kind.summary(result, None).rstrip("\n"), "", "Failed checks:"]
    lines += [f"  - {c.name}" + (f" (at {c.where})" if c.where else "") for c in failed]
    return "\n".join(lines)


def _with_path(extra_path: Optional[str]) -> ContextManager[None]:
    """Put ``extra_path`` first on the runs' PYTHONPATH for the duration of the block."""
    import contextlib

    @contextlib.contextmanager
    def block():
        saved = os.environ.get("PYTHONPATH")
        if extra_path:
            os.environ["PYTHONPATH"] = extra_path + (os.pathsep + saved if saved else "")
        try:
            yield
        finally:
            if extra_path:
                if saved is None:
                    os.environ.pop("PYTHONPATH", None)
                else:
                    os.environ["PYTHONPATH"] = saved
    return block()


def run_audit(name: str, request: pytest.FixtureRequest, target: Any = None, *, fail: bool = True,
              out: Optional[str] = None, **options: Any) -> Any:
    """Run the audit ``name`` on ``target`` for a test; fail the test with the audit's
    explanation when a check fails (``fail=False`` only returns the result)."""
    from audit import api, registry
    from audit.probes.errors import UsageError

    kind = registry.get(name)
    problem, extra_path = None, None
    try:
        if not kind.in_process or isinstance(target, str):
            target, extra_path = process_target(target, _test_dir(request)) \
                if target is not None else (None, None)
        with _with_path(extra_path):
            result = api.run(name, target, out=out, **options)
    except (AuditTargetError, UsageError) as exc:
        problem = str(exc)
    if problem is not None:  # failed outside the except block: no chained traceback
        pytest.fail(problem, pytrace=False)
    message = _failure(kind, result)
    if message and fail:
        pytest.fail(message, pytrace=False)
    return result


def _fixture(name: str) -> Callable[[pytest.FixtureRequest], Callable[..., Any]]:
    def fixture(request: pytest.FixtureRequest) -> Callable[..., Any]:
        def run(target: Any = None, **options: Any) -> Any:
            return run_audit(name, request, target, **options)
        return run

    fixture.__doc__ = (f"``{name}_audit(target, *, fail=True, out=None, **settings)``: run "
                       f"`audit {name}` on the target with the settings given (the keys of "
                       f"[tool.audit.{name}]); returns the result and fails the test with the "
                       "audit's explanation when a check fails.")
    return pytest.fixture(name=f"{name}_audit")(fixture)


def _register() -> None:
    from audit import registry  # light: the engines load when a fixture runs

    for kind in registry.KINDS:
        globals()[f"{kind.name}_audit"] = _fixture(kind.name)


_register()
