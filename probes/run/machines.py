"""What tells two machines apart: the keys of two runs' environment descriptions that differ
(:func:`audit.probes.run.environment.describe` and the thread variables). ``audit diff`` lists
them between its sides, ``audit determinism --across-nodes`` between the nodes its runs ran on."""
from __future__ import annotations

from typing import Any

from audit.probes.results.diff import ENVIRONMENT_KEYS, EnvironmentChange

#: Recorded twice under two names; listed once, under the first.
_SAME_AS = {"flags.num_threads": "threads"}
#: Not a property of the environment: why a side's description is incomplete.
_NOT_ENVIRONMENT = {"error"}


def _flat(env: dict[str, Any]) -> dict[str, Any]:
    """``{"threads": 2, "flags.OMP_NUM_THREADS": "2", ...}``: nested tables one level down."""
    out = {}
    for key, value in env.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        elif key not in _NOT_ENVIRONMENT:
            out[key] = value
    return {k: v for k, v in out.items() if k not in _SAME_AS}


def environment_changes(env_a: dict[str, Any], env_b: dict[str, Any]) -> list[EnvironmentChange]:
    """Every recorded key whose value differs between the sides (a key one side lacks counts
    as None there): :data:`ENVIRONMENT_KEYS` first, in that order, then the rest by name
    (the determinism flags and thread variables as ``flags.NAME``)."""
    a, b = _flat(env_a), _flat(env_b)
    keys = set(a) | set(b)
    order = [k for k in ENVIRONMENT_KEYS if k in keys] + sorted(keys - set(ENVIRONMENT_KEYS))
    return [EnvironmentChange(key=k, a=a.get(k), b=b.get(k)) for k in order if a.get(k) != b.get(k)]
