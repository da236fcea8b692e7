"""``determinism.json`` / ``init.json``: the result model's ``to_dict`` as stable, valid JSON.

Key order is the contract's (``to_dict`` puts its fields first), indentation is two spaces and
the text ends with a newline, so the same result always gives the same bytes and diffs of
committed files stay small. JSON has no NaN or Infinity: non-finite numbers become ``null``.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Union

from audit.reports.files import write_atomic


def _jsonable(value: Any) -> Any:
    """``value`` with every non-finite float as ``None`` and every non-JSON type made plain
    (NumPy scalars and arrays, paths, sets, tuples), recursively."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_jsonable(v) for v in value), key=repr)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    tolist = getattr(value, "tolist", None)  # NumPy scalars and arrays
    if callable(tolist):
        return _jsonable(tolist())
    item = getattr(value, "item", None)
    if callable(item):
        return _jsonable(item())
    return str(value)


def dumps(result: Any) -> str:
    """The result's JSON document (schema ``audit.determinism/1`` or ``audit.init/1``)."""
    data = result.to_dict() if hasattr(result, "to_dict") else result
    return json.dumps(_jsonable(data), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def write(result: Any, path: Union[str, "os.PathLike[str]"]) -> None:
    """Write the result's JSON document to ``path`` atomically."""
    write_atomic(path, dumps(result))
