"""Targets given as Python objects, shipped by value to the audit's fresh runs.

A function or class defined in a notebook cell or in a script's ``__main__`` (closures over
the notebook's variables included) cannot be imported by a fresh process. :func:`ship` (in the
parent, before any run) pickles it by value with cloudpickle into a folder and returns a
target spec that every fresh run loads as it loads ``file.py:NAME``
(``/tmp/audit-target-.../target-0.pkl:target,label='build (cell 3, line 1)'``). The run seeds,
then :func:`audit.probes.run.target.load_callable` unpickles the object (rebuilding functions
and classes: no model is built by unpickling), then calls it, exactly as a file's function.

The file also carries the notebook's cell names (code file -> execution count), registered
in the run with :func:`audit.probes.run.processes.name_cells`, so that every place a run
reports in a cell reads ``cell 3, line 2``; and the source text of the code it ships, for the
run's code fingerprint. What cannot be pickled (an open file written to, a socket, a running
generator, a lock) is a :class:`UsageError` naming the object. Light: no torch.
"""
from __future__ import annotations

import hashlib
import inspect
import io
import linecache
import marshal
import os
import sys
import types
from collections import ChainMap
from typing import Any, Callable, Iterator, Optional

import cloudpickle

from audit.probes.errors import UsageError
from audit.probes.run import processes
from audit.probes.run.target import shipped_spec


def kernel_cells() -> dict[str, int]:
    """The running IPython session's cells: code file name -> execution count (``In [N]``);
    empty outside IPython."""
    shell = _shell()
    if shell is None:
        return {}
    cells = {}
    for name in list(linecache.cache):
        label = shell.compile.format_code_name(name)
        if label and label[1].startswith("In[") and label[1][3:-1].isdigit():
            cells[name] = int(label[1][3:-1])
    return cells


def _shell() -> Any:
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell if shell is not None and hasattr(shell.compile, "format_code_name") else None


def label(obj: Any) -> str:
    """How reports name a shipped object: its name and where it was defined
    (``build (cell 3, line 1)``, ``Net (train.py:12)``)."""
    name = getattr(obj, "__qualname__", None) or f"{type(obj).__name__} object"
    code = getattr(inspect.unwrap(obj), "__code__", None) if callable(obj) else None
    return f"{name} ({processes.place(code.co_filename, code.co_firstlineno)})" if code else name


def ship(obj: Any, folder: str, cells: Optional[dict[str, int]] = None) -> str:
    """Pickle ``obj`` by value into ``folder``; the target spec that loads it in a fresh run.
    Raises :class:`UsageError` naming what cannot be pickled."""
    refuse_unfit(obj)
    cells = kernel_cells() if cells is None else cells
    processes.name_cells(cells)
    name = label(obj)
    try:
        body = dumps(obj)
    except Exception as exc:
        raise UsageError(_refusal(obj, name, exc)) from None
    # What the run's code fingerprint reads: the code's text, and the object's own bytes (two
    # closures over other values are other code, as two specs with other arguments are).
    code = [*code_texts(obj), "pickle " + hashlib.blake2b(body, digest_size=16).hexdigest()]
    data = dumps({"target": body, "cells": cells, "code": code})
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"target-{len(os.listdir(folder))}.pkl")
    with open(path, "wb") as fh:
        fh.write(data)
    return shipped_spec(path, name)


def _code_reduce(code: types.CodeType) -> tuple[Callable[[bytes], Any], tuple[bytes]]:
    return marshal.loads, (marshal.dumps(code),)


class _Pickler(cloudpickle.Pickler):
    """cloudpickle, but code objects keep their file names (cloudpickle writes
    ``<dynamic-code>``): a run's places must name the cell or file the code came from. The
    runs use this interpreter, so its ``marshal`` format."""

    dispatch_table = ChainMap({types.CodeType: _code_reduce}, cloudpickle.Pickler.dispatch_table)


def dumps(obj: Any) -> bytes:
    """``obj`` pickled by value where it is not importable (:class:`_Pickler`)."""
    buffer = io.BytesIO()
    _Pickler(buffer).dump(obj)
    return buffer.getvalue()


def refuse_unfit(obj: Any) -> None:
    """A model object or anything not callable cannot stand for a target that builds anew."""
    if not callable(obj):
        raise UsageError(f"the target is a {type(obj).__name__}, not a callable; pass the "
                         "function (or class) that builds the model")
    if hasattr(obj, "parameters") and not isinstance(obj, type):
        raise UsageError(f"the target is a built model ({type(obj).__name__} object); every run "
                         "builds its own after seeding: pass the function or class that builds it")


def code_texts(obj: Any) -> list[str]:
    """The text of every cell or file whose code ``obj`` reaches (sorted)."""
    files: set[str] = set()
    for code in _codes(obj, set()):
        files.add(code.co_filename)
    return sorted("".join(linecache.getlines(f)) for f in files)


def _codes(obj: Any, seen: set[int]) -> Iterator[types.CodeType]:
    """Code objects of the user's functions and classes reachable from ``obj``."""
    if id(obj) in seen or not _users(obj):
        return
    seen.add(id(obj))
    code = getattr(obj, "__code__", None)
    if isinstance(code, types.CodeType):
        yield code
    for _, value in references(obj):
        if callable(value):
            yield from _codes(value, seen)


def _users(obj: Any) -> bool:
    """Defined in the user's code (``__main__``, a cell, the user's files), not a library."""
    code = getattr(getattr(obj, "__func__", obj), "__code__", None)
    if isinstance(code, types.CodeType):
        return processes.is_user_file(code.co_filename)
    module = getattr(obj, "__module__", None)
    if module == "__main__":
        return True
    path = getattr(sys.modules.get(module or ""), "__file__", None)
    return isinstance(path, str) and processes.is_user_file(path)


def references(obj: Any) -> Iterator[tuple[str, Any]]:
    """``(name, value)`` of what pickling ``obj`` by value takes along: a function's closure
    variables, the globals its code names, its defaults; a class's attributes; a partial's
    function and arguments; a container's items."""
    if isinstance(obj, (types.FunctionType, types.MethodType)):
        fn = obj.__func__ if isinstance(obj, types.MethodType) else obj
        yield from zip(fn.__code__.co_freevars, (_cell(c) for c in fn.__closure__ or ()))
        names = _global_names(fn.__code__)
        yield from ((n, fn.__globals__[n]) for n in sorted(names) if n in fn.__globals__)
        yield from (("default", d) for d in fn.__defaults__ or ())
        yield from (fn.__kwdefaults__ or {}).items()
    elif isinstance(obj, type):
        for name, value in vars(obj).items():
            if not name.startswith("__") or name == "__init__":
                yield name, getattr(value, "__func__", value)
    elif hasattr(obj, "func") and hasattr(obj, "args") and hasattr(obj, "keywords"):
        yield "func", obj.func
        yield from ((f"[{i}]", v) for i, v in enumerate(obj.args))
        yield from obj.keywords.items()
    elif isinstance(obj, dict):
        yield from ((f"[{k!r}]", v) for k, v in obj.items())
    elif isinstance(obj, (list, tuple, set)):
        yield from ((f"[{i}]", v) for i, v in enumerate(obj))


def _cell(cell: types.CellType) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # a closure variable not bound yet
        return None


def _global_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def culprit(obj: Any, path: str, seen: Optional[set[int]] = None) -> Optional[tuple[str, Any]]:
    """``(path, object)`` of the first thing reachable from ``obj`` that cannot be pickled
    (``build -> log``), looking inside functions, classes and containers; None when each
    part pickles alone."""
    seen = set() if seen is None else seen
    for name, value in references(obj):
        if id(value) in seen or isinstance(value, types.ModuleType):
            continue
        seen.add(id(value))
        try:
            dumps(value)
        except Exception:
            return culprit(value, f"{path} -> {name}", seen) or (f"{path} -> {name}", value)
    return None


def _refusal(obj: Any, name: str, exc: Exception) -> str:
    found = culprit(obj, getattr(obj, "__qualname__", "the target"))
    what = f"{found[0]} (a {type(found[1]).__name__})" if found else name
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return (f"the target {name} cannot be shipped to the audit's fresh runs: {what} cannot be "
            f"pickled ({reason}); create it inside the function that builds the target, or "
            "save the builder in a file and pass 'file.py:NAME'")
