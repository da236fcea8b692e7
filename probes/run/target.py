"""Finding, loading and normalizing the user's target.

A target spec is ``path/to/file.py:NAME`` or ``package.module:NAME``, optionally followed by
keyword arguments for the callable after commas (``train.py:build,lr=0.01,act='gelu'``; values
are Python literals, else strings). NAME returns an ``nn.Module``, a mapping, or an
:class:`audit.Target`. Every failure raises :class:`TargetError` with one line that says what
is wrong and what to do.
"""
from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import os
import shutil
import sys
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

from audit.probes.errors import TargetError
from audit.probes.results import BUILTIN_LABEL, BUILTIN_TARGET

if TYPE_CHECKING:  # torch: imported when a target is normalized
    from audit.probes.run.training import TrainingSetup

#: How a shipped target's file ends (an object pickled by :mod:`audit.probes.run.shipped`).
SHIPPED_SUFFIX = ".pkl"
#: The keys a target mapping (or :class:`Target`) may carry.
KEYS = ("model", "data", "loss", "optimizer", "step", "scheduler", "evaluate", "save", "load")


@dataclass
class Target:
    """What a target callable may return instead of a plain dict (contract keys)."""

    model: Any
    data: Optional[Iterable[Any]] = None
    loss: Optional[Callable[..., Any]] = None
    optimizer: Optional[Callable[..., Any]] = None
    step: Optional[Callable[..., Any]] = None
    scheduler: Optional[Callable[..., Any]] = None  # callable(optimizer) -> LR scheduler
    evaluate: Optional[Callable[..., Any]] = None  # callable(model) -> float | dict[str, float]
    save: Optional[Callable[..., Any]] = None  # callable(path, objects): the user's checkpoint code
    load: Optional[Callable[..., Any]] = None  # callable(path, objects)


@dataclass(frozen=True)
class TargetSpec:
    """A parsed target spec: where the callable lives, its name, and its keyword arguments."""

    where: str
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        args = "".join(f",{k}={v!r}" for k, v in self.kwargs.items())
        return f"{self.where}:{self.name}{args}"


def split_top_level(text: str, sep: str = ",") -> list[Any]:
    """``text`` split at ``sep`` outside brackets and quotes (``a=(1,2),b='x,y'`` -> 2 parts)."""
    parts, depth, quote, start, escaped = [], 0, None, 0, False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif quote:
            escaped = ch == "\\"
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _argument(spec: str, text: str) -> tuple[str, Any]:
    key, eq, raw = text.partition("=")
    key = key.strip()
    if not eq or not key.isidentifier():
        raise TargetError(f"target {spec!r}: {text.strip()!r} is not KEY=VALUE; write the "
                          "arguments as file.py:NAME,lr=0.01,depth=3")
    raw = raw.strip()
    try:
        return key, ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return key, raw


def parse_spec(spec: str) -> TargetSpec:
    """Parse ``file.py:NAME[,key=value...]`` or ``package.module:NAME[,...]``."""
    head, *rest = split_top_level(spec.strip())
    where, sep, name = head.rpartition(":")
    # A Windows drive letter ("C:\\x.py") has no NAME after it.
    if not sep or not name or not where or not name.replace(".", "_").isidentifier():
        raise TargetError(
            f"target {spec!r} is not 'path/to/file.py:NAME' or 'package.module:NAME'; "
            "name the callable after a colon"
        )
    kwargs = dict(_argument(spec, part) for part in rest)
    if len(kwargs) != len(rest):
        raise TargetError(f"target {spec!r} names an argument twice; give each once")
    return TargetSpec(where, name, kwargs)


def split_spec(spec: str) -> tuple[str, str]:
    """``(where, name)`` of a spec (its arguments left out)."""
    parsed = parse_spec(spec)
    return parsed.where, parsed.name


def shipped_spec(path: str, label: str) -> str:
    """The spec of an object shipped by value to ``path`` (see :mod:`audit.probes.run.shipped`),
    named ``label`` in reports."""
    return f"{path}:target,label={label!r}"


def is_shipped(spec: Optional[str]) -> bool:
    """Whether ``spec`` names an object shipped by value (not a file or module)."""
    try:
        return spec is not None and parse_spec(spec).where.endswith(SHIPPED_SUFFIX)
    except TargetError:
        return False


def carry(spec: Optional[str], folder: str) -> tuple[Optional[str], list[str]]:
    """For runs on other machines: a shipped object's spec with its pickle copied into
    ``folder`` (the audit's work folder, whose input files an executor sends to the node that
    runs a job, naming them there), and the files to send; any other spec as it is, with none."""
    if spec is None or not is_shipped(spec):
        return spec, []
    parsed = parse_spec(spec)
    digest = hashlib.blake2b(os.path.abspath(parsed.where).encode(), digest_size=6).hexdigest()
    copy = os.path.join(folder, f"shipped-{digest}{SHIPPED_SUFFIX}")
    if not os.path.exists(copy):
        shutil.copyfile(parsed.where, copy)
    return shipped_spec(copy, label(spec)), [copy]


def label(spec: Optional[str]) -> str:
    """How reports name a target: its spec; a shipped object's name and where it was defined
    (``build (cell 3, line 1)``); or the built-in example."""
    if spec is None:
        return BUILTIN_LABEL
    return str(parse_spec(spec).kwargs.get("label", spec)) if is_shipped(spec) else spec


def load_callable(spec: str) -> Callable[..., Any]:
    """Import the object a spec names. A file's folder goes first on ``sys.path``; a shipped
    object is unpickled."""
    where, name = split_spec(spec)
    if where.endswith(SHIPPED_SUFFIX):
        return _unpickled(where)
    if where.endswith(".py") or os.sep in where or "/" in where:
        path = os.path.abspath(where)
        if not os.path.isfile(path):
            raise TargetError(f"target file {where!r} does not exist; check the path")
        folder = os.path.dirname(path)
        if sys.path[:1] != [folder]:
            sys.path.insert(0, folder)
        module_name = "__audit_target__"
        spec_obj = importlib.util.spec_from_file_location(module_name, path)
        if spec_obj is None or spec_obj.loader is None:  # a file Python cannot import (no .py)
            raise TargetError(f"target file {where!r} is not a Python file; give a .py file")
        module = importlib.util.module_from_spec(spec_obj)
        sys.modules[module_name] = module
        try:
            spec_obj.loader.exec_module(module)
        except Exception as exc:  # the user's module failed while importing
            raise TargetError(f"importing {where} failed: {_described(exc)}") from exc
    else:
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as exc:
            if exc.name and where.startswith(exc.name):
                raise TargetError(
                    f"cannot import module {where!r}; is it installed, or run from the folder "
                    "that holds it?"
                ) from exc
            raise TargetError(f"importing {where} failed: {_described(exc)}") from exc
        except Exception as exc:
            raise TargetError(f"importing {where} failed: {_described(exc)}") from exc
    obj = module
    for part in name.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise TargetError(f"{where} has no {name!r}; check the name after the colon") from None
    if not callable(obj):
        raise TargetError(f"{spec} is a {type(obj).__name__}, not a callable; name a function")
    return obj


#: The source texts of the code shipped by value to this process (its code fingerprint).
SHIPPED_CODE: list[str] = []


def _unpickled(path: str) -> Callable[..., Any]:
    """A shipped object (:mod:`audit.probes.run.shipped`), its notebook cells named."""
    import cloudpickle

    from audit.probes.run.processes import name_cells

    try:
        with open(path, "rb") as fh:
            payload = cloudpickle.load(fh)
        name_cells(payload.get("cells") or {})
        SHIPPED_CODE.extend(payload.get("code") or [])
        return cloudpickle.loads(payload["target"])
    except Exception as exc:  # e.g. a module the notebook imported that this process lacks
        raise TargetError(f"the target shipped from this session cannot be rebuilt in a fresh "
                          f"run: {_described(exc)}; make what it imports importable from the working "
                          "folder, or save the builder in a file") from exc


def _described(exc: BaseException) -> str:
    """``Type: message (at file.py:LINE)``, the place being the innermost frame of the user's
    code (for a syntax error, the line that does not parse)."""
    from audit.probes.run.processes import Frame, place, user_frame

    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:
        text = f"{type(exc).__name__}: {exc.msg}"
        return f"{text} (at {place(exc.filename, exc.lineno)})"
    frames = [Frame(f.filename, f.lineno or 0, f.name)
              for f in reversed(traceback.extract_tb(exc.__traceback__))]
    found = user_frame(frames)
    return f"{text} (at {found.where})" if found else text


def call_target(fn: Callable[..., Any], spec: str, kwargs: Optional[dict[str, Any]] = None) -> Any:
    """Call the target with its spec's keyword arguments (none for a plain spec)."""
    kwargs = kwargs or {}
    try:
        return fn(**kwargs)
    except TypeError as exc:
        if "argument" in str(exc) and len(traceback.extract_tb(exc.__traceback__)) < 2:
            need = ("accept the arguments the spec gives" if kwargs else
                    "take no arguments; wrap it in a zero-argument function")
            raise TargetError(f"{spec} must {need} ({exc})") from exc
        raise TargetError(f"{spec} raised {_described(exc)}") from exc
    except Exception as exc:
        raise TargetError(f"{spec} raised {_described(exc)}") from exc


def normalize(returned: Any, spec: str, *, input_shape: Optional[tuple[Any, ...]] = None,
              num_classes: Optional[int] = None, batch_size: int = 16,
              batches: int = 4, seed: int = 0) -> TrainingSetup:
    """Turn what the target returned into a :class:`probes.run.training.TrainingSetup`."""
    from torch import nn

    from audit.probes.run import training

    if isinstance(returned, nn.Module):
        model = returned
        try:
            shape = tuple(input_shape) if input_shape else training.infer_input_shape(model)
        except ValueError as exc:
            raise TargetError(f"{spec} returned a bare module: {exc}") from None
        classes = num_classes or training.infer_num_classes(model)
        data = training.synthetic_batches(shape, classes, batch_size, batches, seed)
        return training.TrainingSetup(model=model, data=data, synthetic=True,
                                      description=f"synthetic data, inputs {shape}, {classes} classes")
    if isinstance(returned, Target):
        returned = {k: getattr(returned, k) for k in KEYS}
    if not isinstance(returned, dict) and hasattr(returned, "keys") and hasattr(returned, "__getitem__"):
        returned = {k: returned[k] for k in returned.keys()}
    if not isinstance(returned, dict):
        raise TargetError(
            f"{spec} returned a {type(returned).__name__}; return an nn.Module, or a dict / "
            "audit.Target with 'model' and 'data'"
        )
    unknown = set(returned) - set(KEYS)
    if unknown:
        raise TargetError(
            f"{spec} returned unknown key(s) {sorted(unknown)}; allowed: {', '.join(KEYS)}"
        )
    own_model = returned.get("model")
    if not isinstance(own_model, nn.Module):
        raise TargetError(f"{spec} returned no nn.Module under 'model'; add one")
    own_data = returned.get("data")
    if own_data is None:
        raise TargetError(f"{spec} returned a mapping without 'data'; add a DataLoader or a list of batches")
    # An iterator has __next__; calling iter() to find out would start a DataLoader pass, which
    # draws its base seed from the global generator and shifts every shuffle after it.
    if not hasattr(own_data, "__iter__") or hasattr(own_data, "__next__"):
        raise TargetError(
            f"{spec}: 'data' must be re-iterable (a DataLoader or a list), not a one-shot "
            "iterator or generator"
        )
    setup = training.TrainingSetup(model=own_model, data=own_data)
    for key in ("loss", "optimizer", "step", "scheduler", "evaluate", "save", "load"):
        value = returned.get(key)
        if value is not None:
            if not callable(value):
                raise TargetError(f"{spec}: '{key}' must be callable, got {type(value).__name__}")
            setattr(setup, key, value)
    return setup


def check_target(spec: Optional[str], cwd: Optional[str] = None) -> None:
    """What can be seen of a target without running any of its code: the spec's form, that the
    file or module exists, and that its text binds NAME (read, not run). Raises
    :class:`TargetError` as loading would, so that no run is started for a target that
    cannot load."""
    if spec is None:
        return
    where, name = split_spec(spec)
    if where.endswith(SHIPPED_SUFFIX):
        if not os.path.isfile(where):
            raise TargetError(f"the shipped target {where!r} is gone; pass the object again")
        return
    source: Optional[str]
    if _is_file(where):
        source = os.path.join(cwd or os.getcwd(), where)
        if not os.path.isfile(source):
            raise TargetError(f"target file {where!r} does not exist; check the path")
    else:
        source = _module_source(where, cwd or os.getcwd())
    names = _top_level_names(source) if source else None
    if names is not None and name.split(".")[0] not in names:
        raise TargetError(f"{where} has no {name!r}; check the name after the colon")


def _is_file(where: str) -> bool:
    return where.endswith(".py") or os.sep in where or "/" in where


def _module_source(module: str, cwd: str) -> Optional[str]:
    """The source file of ``module`` found without importing anything (None: a package or a
    module without Python source); raises :class:`TargetError` when there is none."""
    from importlib.machinery import ModuleSpec, PathFinder

    found: Optional[ModuleSpec] = None
    locations: Optional[list[str]] = [cwd, *sys.path]
    for part in module.split("."):
        found = PathFinder.find_spec(part, locations) if locations is not None else None
        if found is None:
            raise TargetError(f"cannot import module {module!r}; is it installed, or run from "
                              "the folder that holds it?")
        locations = list(found.submodule_search_locations or []) or None
    assert found is not None  # a module name has a part: each one was found or raised
    origin = found.origin or ""
    return origin if origin.endswith(".py") and not origin.endswith("__init__.py") else None


#: Calls that can bind a module's names without naming them in the text.
_DYNAMIC = {"globals", "vars", "exec", "setattr", "locals"}


def _top_level_names(path: str) -> Optional[set[Any]]:
    """Names a module's text binds (anywhere: a superset of its top level); None when the text
    cannot tell (``import *``, ``globals()``, ``exec``, a module ``__getattr__``)."""
    try:
        with open(path, "rb") as fh:
            tree = ast.parse(fh.read(), filename=path)
    except SyntaxError as exc:
        raise TargetError(f"importing {_short(path)} failed: {_described(exc)}") from None
    except (OSError, ValueError):
        return None
    names: set[Any] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    return None
                names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Name) and node.id in _DYNAMIC:
            return None
    return None if "__getattr__" in names else names


def _short(path: str) -> str:
    from audit.probes.run.processes import short_path

    return short_path(path)


def load_target(spec: Optional[str], **options: Any) -> TrainingSetup:
    """Load, call and normalize a target spec (``None`` means the built-in example)."""
    spec = spec or BUILTIN_TARGET
    fn, name = load_callable(spec), label(spec)
    kwargs = {} if is_shipped(spec) else parse_spec(spec).kwargs
    return normalize(call_target(fn, name, kwargs), name, **options)
