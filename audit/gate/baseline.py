"""Baselines: accept what is known, fail only on regressions.

The file (schema ``audit.baseline/1``, JSON with sorted keys) holds one snapshot per audit, the
names of the checks that failed when it was recorded, and the per-metric tolerances (the
kind's defaults < the file < ``[tool.audit.<audit>.tolerances]``). A check that also failed in
the baseline is reported as skipped ("accepted by the baseline"); a new failure, or a
regression of a metric, fails. ``--update-baseline`` records the current state (and passes).
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from audit import registry
from audit.kinds.base import AuditKind
from audit.kinds.snapshot_shape import snapshot_problem
from audit.probes.errors import UsageError
from audit.probes.results import Check
from audit.reports.files import write_atomic

BASELINE_SCHEMA = "audit.baseline/1"
DEFAULT_BASELINE = "audit-baseline.json"
#: The check added per audit when a baseline is in use.
REGRESSION_CHECK = "no regressions against the baseline"


@dataclass
class BaselineState:
    """One audit compared with (or recorded into) a baseline file."""

    path: str
    regressions: list[Any] = field(default_factory=list)  # [(text, where)]
    accepted: set[Any] = field(default_factory=set)  # names of checks that failed in the baseline
    updated: bool = False
    notes: list[Any] = field(default_factory=list)  # e.g. "recorded with other settings"

    @property
    def texts(self) -> list[Any]:
        return [text for text, _ in self.regressions]


def baseline_problem(doc: dict[str, Any]) -> Optional[str]:
    """The first thing wrong with the snapshots of a baseline document (None: nothing), by
    each kind's ``snapshot_rules``."""
    for kind in registry.KINDS:
        if kind.snapshot_rules and kind.name in doc:
            problem = snapshot_problem(kind.name, doc[kind.name], kind.snapshot_rules)
            if problem:
                return problem
    return None


def read_baseline(path: str) -> dict[str, Any]:
    """The baseline document, checked; a missing or malformed file is a usage error."""
    if not os.path.isfile(path):
        raise UsageError(f"baseline {path} does not exist; run with --update-baseline to create it")
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise UsageError(f"baseline {path} cannot be read ({exc}); fix it or run with "
                         "--update-baseline to rewrite it") from None
    if not isinstance(data, dict) or data.get("schema") != BASELINE_SCHEMA:
        raise UsageError(f"baseline {path} is not an {BASELINE_SCHEMA} file; run with "
                         "--update-baseline to rewrite it")
    problem = baseline_problem(data)
    if problem:
        raise UsageError(f"baseline {path} is malformed: {problem}; fix it or run with "
                         "--update-baseline to rewrite it")
    for name, section in data.items():
        if name != "schema" and not (isinstance(section, dict)
                                     and isinstance(section.get("failing_checks", []), list)
                                     and isinstance(section.get("tolerances", {}), dict)):
            raise UsageError(f"baseline {path}: the {name} snapshot is malformed; run with "
                             "--update-baseline to rewrite it")
    return data


def write_baseline(path: str, data: dict[str, Any]) -> None:
    data = {**data, "schema": BASELINE_SCHEMA}
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def _settings_notes(name: str, base: dict[str, Any], now: dict[str, Any]) -> list[Any]:
    b, n = base.get("settings") or {}, now.get("settings") or {}
    changed = [f"{k} {b.get(k)!r} -> {n.get(k)!r}" for k in sorted(set(b) | set(n))
               if k != "target" and b.get(k) != n.get(k)]
    return [f"note: the {name} baseline was recorded with other settings ({'; '.join(changed)}); "
            "rerun with --update-baseline if that is intended"] if changed else []


def compare(kind: AuditKind, result: Any, doc: dict[str, Any], path: str, update: bool,
            tolerances: Optional[dict[str, Any]] = None) -> BaselineState:
    """Compare one audit with its section of ``doc``, or record it there when ``update``."""
    now = kind.snapshot(result)
    section = doc.get(kind.name)
    if not update and not isinstance(section, dict):
        raise UsageError(f"baseline {path} has no {kind.name} snapshot; run with "
                         "--update-baseline to record it")
    tol = {**kind.tolerances, **((section or {}).get("tolerances") or {}), **(tolerances or {})}
    if update:
        doc[kind.name] = {**now, "tolerances": tol}
        return BaselineState(path, accepted=set(now["failing_checks"]), updated=True)
    assert isinstance(section, dict)  # refused above when missing
    try:
        found = kind.regressions(section, now, tol)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UsageError(f"baseline {path}: the {kind.name} snapshot is malformed ({exc}); run "
                         "with --update-baseline to rewrite it") from None
    return BaselineState(path, found, set(section.get("failing_checks") or []),
                         notes=_settings_notes(kind.name, section, now))


def load_for_update(path: str) -> dict[str, Any]:
    """The document to record into: the file's, or a new one when it is missing or unusable."""
    try:
        return read_baseline(path)
    except UsageError:
        return {}


def apply_baseline(kind: AuditKind, result: Any, path: Optional[str], update: bool,
                   tolerances: Optional[dict[str, Any]] = None) -> Optional[BaselineState]:
    """One audit against the baseline at ``path`` (default ``audit-baseline.json``), or
    recorded into it when ``update``; None when no baseline is in use."""
    if path is None and not update:
        return None
    path = path or DEFAULT_BASELINE
    doc = load_for_update(path) if update else read_baseline(path)
    state = compare(kind, result, doc, path, update, tolerances)
    if update:
        write_baseline(path, doc)
    return state


def with_baseline(name: str, checks: list[Check], state: Optional[BaselineState]) -> list[Any]:
    """Checks that also failed in the baseline become skipped ("accepted"); a check that
    lists the regressions is added."""
    if state is None:
        return checks
    base = os.path.basename(state.path)
    out = [dataclasses.replace(c, skipped=True, message=f"accepted by the baseline ({base}): {c.message}")
           if not c.passed and not c.skipped and c.name in state.accepted else c for c in checks]
    if state.updated:
        message = f"baseline {state.path} updated with the current results"
    elif state.regressions:
        message = "; ".join(state.texts)
    else:
        message = f"nothing got worse than in {state.path}"
    where = next((w for _, w in state.regressions if w), None)
    fix = "" if not state.regressions else (
        "fix the regression, or accept the new state: rerun with --update-baseline and "
        "commit the baseline file")
    out.append(Check(name, REGRESSION_CHECK, not state.regressions, message, fix, where))
    return out
