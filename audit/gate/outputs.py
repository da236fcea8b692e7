"""The report files of a gate run: each audit's JSON and HTML, ``summary.md``, JUnit XML,
``index.html`` for ``audit check``; every file written atomically."""
from __future__ import annotations

import os
from typing import Any, Optional

from audit.gate import ci
from audit.gate.baseline import BaselineState, with_baseline
from audit.kinds.base import AuditKind
from audit.probes.results import AuditSummary, GateResult
from audit.reports import html, json_report, junit
from audit.reports.files import write_atomic
from audit.reports.markdown import summary_markdown


def audit_summary(kind: AuditKind, result: Any) -> AuditSummary:
    status, title = kind.headline(result)
    text, label, code = kind.index(result)
    return AuditSummary(kind.name, status, title, text, label, code)


def write_audit_files(out: str, kind: AuditKind, result: Any) -> dict[str, Any]:
    """``<audit>.json`` and ``<audit>.html`` in ``out``; returns their paths by format."""
    os.makedirs(out, exist_ok=True)
    paths = {"json": os.path.join(out, f"{kind.name}.json"),
             "html": os.path.join(out, f"{kind.name}.html")}
    json_report.write(result, paths["json"])
    write_atomic(paths["html"], kind.html(result))
    return paths


def add_audit(gate: GateResult, kind: AuditKind, result: Any, state: Optional[BaselineState],
              prefix: bool = False) -> None:
    """One audit's checks (baseline applied), summary and report name into ``gate``;
    ``prefix`` names the audit before each regression (``audit check``)."""
    gate.checks += with_baseline(kind.name, kind.checks(result), state)
    gate.summaries[kind.name] = audit_summary(kind, result)
    gate.reports[kind.name] = f"{kind.name}.html"
    if state is not None:
        gate.baseline_regressions += [f"{kind.name}: {t}" if prefix else t for t in state.texts]


def write_gate_files(out: str, gate: GateResult, junit_path: Optional[str],
                     results: dict[str, Any]) -> dict[str, Any]:
    """``summary.md`` (and the step summary), JUnit XML when asked, CI annotations."""
    paths = {"summary": os.path.join(out, "summary.md")}
    write_atomic(paths["summary"], summary_markdown(gate))
    ci.append_step_summary(gate)
    if junit_path:
        junit.write(gate.checks, junit_path)
        paths["junit"] = junit_path
    ci.print_annotations(gate.checks, results)
    return paths


def write_reports(out: str, kind: AuditKind, result: Any, junit_path: Optional[str] = None,
                  state: Optional[BaselineState] = None) -> dict[str, Any]:
    """One audit's reports into ``out``: JSON, HTML, ``summary.md``, JUnit when asked.
    Returns the paths by kind (``json``, ``html``, ``summary``, ``junit``)."""
    paths = write_audit_files(out, kind, result)
    gate = GateResult()
    add_audit(gate, kind, result, state)
    paths.update(write_gate_files(out, gate, junit_path, {kind.name: result}))
    return paths


def write_index(out: str, gate: GateResult) -> str:
    path = os.path.join(out, "index.html")
    html.write_index(gate, path)
    return path
