"""Init scheme names: which are valid, checked in one place (light: no torch, so the
configuration can check them before anything is imported)."""
from __future__ import annotations

import math
from typing import Any, Iterable, Optional

from audit.probes.results import BUILTIN_SCHEMES

VALID = ", ".join(BUILTIN_SCHEMES) + ", normal:STD (e.g. normal:0.02)"
#: What :func:`scheme_problem` says of a ``normal:STD`` whose STD is not a positive number.
BAD_STD = "normal:STD needs a positive STD"
UNKNOWN = "unknown scheme"


def normal_std(text: str) -> float:
    """The STD of ``normal:STD`` (NaN when it is not a number)."""
    try:
        return float(text.split(":", 1)[1])
    except ValueError:
        return float("nan")


def scheme_problem(name: str) -> Optional[str]:
    """Why ``name`` is not a scheme name (:data:`BAD_STD` or :data:`UNKNOWN`), or None."""
    if name in BUILTIN_SCHEMES:
        return None
    if name.startswith("normal:"):
        std = normal_std(name)
        return None if math.isfinite(std) and std > 0 else BAD_STD
    return UNKNOWN


def parse_scheme(name: str) -> tuple[str, Optional[float]]:
    """``(kind, std)`` of a scheme name; ``std`` only for ``normal:STD``. Raises ValueError."""
    text = str(name).strip()
    problem = scheme_problem(text)
    if problem == BAD_STD:
        raise ValueError(f"init scheme {name!r}: STD must be a positive number, e.g. normal:0.02")
    if problem:
        raise ValueError(f"unknown init scheme {name!r}; valid schemes: {VALID}")
    return ("normal", normal_std(text)) if text.startswith("normal:") else (text, None)


def validate_schemes(names: Iterable[str]) -> list[Any]:
    """The scheme names, stripped, checked and without repeats. Raises ValueError."""
    out = []
    for name in names:
        parse_scheme(name)
        if name.strip() not in out:
            out.append(name.strip())
    if not out:
        raise ValueError(f"no init scheme given; valid schemes: {VALID}")
    return out
