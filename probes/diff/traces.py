"""Putting one side's trace into the other side's names, so the determinism audit's
comparison (:mod:`audit.probes.run.compare`) reads two versions as two runs.

Parameter lists (init, gradients, parameters after the update) are reordered into side b's
parameter order, with ``MISSING`` where side a has no partner (and side a's own extras after
them, so a parameter only a has still differs); module events are renamed, or dropped when the
module has no partner. Fields only a detail run has (optimizer state, module events, lockstep
differences) are dropped by :func:`plain`, so a plain run compares with a detail one.
"""
from __future__ import annotations

from typing import Any, Optional
from audit.probes.run.compare import split
from audit.probes.diff.match import Matching
from audit.probes.results.records import Record

MISSING = "missing"
_DETAIL = ("optim", "modules", "diffs", "seconds")


def _reorder(values: list[Any], names_a: list[str], names_b: list[str], a_of_b: dict[str, str],
             extras: list[str]) -> list[Any]:
    by_name: dict[Optional[str], Any] = dict(zip(names_a, values))
    out = [by_name.get(a_of_b.get(b_name), MISSING) for b_name in names_b]
    return out + [by_name[p] for p in extras if p in by_name]


def translate(records: list[dict[str, Any]], m: Matching, header_b: dict[str, Any]) -> list[Any]:
    """Side a's trace records in side b's names and parameter order."""
    header_a = split(records)[0]
    names_a, names_b = header_a.get("names", []), header_b.get("names", [])
    a_of_b = {b: a for a, b in m.params.items()}
    known = set(header_a.get("modules", []))
    out = []
    for r in records:
        kind = r.get("type")
        if kind == Record.PARAMS:
            out.append(dict(header_b))
            continue
        r = dict(r)
        for key in ("params", "grads"):
            if kind in (Record.INIT, Record.STEP) and isinstance(r.get(key), list):
                r[key] = _reorder(r[key], names_a, names_b, a_of_b, m.params_a)
        if isinstance(r.get("modules"), list):
            # Modules outside the model (a loss module in script mode) keep their names.
            r["modules"] = [[m.modules.get(e[0], e[0]), *e[1:]] for e in r["modules"]
                            if e[0] in m.modules or e[0] not in known]
        out.append(r)
    return out


def plain(records: list[dict[str, Any]]) -> list[Any]:
    """Records without the detail-only fields: what a plain and a detail run both have."""
    return [{k: v for k, v in r.items() if k not in _DETAIL} for r in records]


def losses(records: list[dict[str, Any]]) -> list[Any]:
    """The loss value of each step of a trace."""
    return [r.get("loss_value") for r in split(records)[2]]
