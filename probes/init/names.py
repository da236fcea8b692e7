"""Init scheme names: parsing and checking them, without torch (the CLI and the script-mode
parent check names before any run)."""
from __future__ import annotations

import math
from typing import Iterable, Optional

from audit.probes.results import BUILTIN_SCHEMES

VALID = ", ".join(BUILTIN_SCHEMES) + ", normal:STD (e.g. normal:0.02)"


def parse_scheme(name: str) -> tuple[str, Optional[float]]:
    """``(kind, std)`` of a scheme name; ``std`` only for ``normal:STD``. Raises ValueError."""
    text = str(name).strip()
    if text in BUILTIN_SCHEMES:
        return text, None
    if text.startswith("normal:"):
        try:
            std = float(text.split(":", 1)[1])
        except ValueError:
            std = float("nan")
        if math.isfinite(std) and std > 0:
            return "normal", std
        raise ValueError(f"init scheme {name!r}: STD must be a positive number, e.g. normal:0.02")
    raise ValueError(f"unknown init scheme {name!r}; valid schemes: {VALID}")


def validate_schemes(names: Iterable[str]) -> list:
    """The scheme names, stripped, checked and without repeats. Raises ValueError."""
    out = []
    for name in names:
        parse_scheme(name)
        if name.strip() not in out:
            out.append(name.strip())
    if not out:
        raise ValueError(f"no init scheme given; valid schemes: {VALID}")
    return out
