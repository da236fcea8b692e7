"""Running audits as a gate: one audit (``audit determinism``, ``audit init``, ...) or every
audit ``[tool.audit]`` enables (``audit check``), with baselines, report files and the
one-line verdicts. Returns outcomes; the CLI prints them and chooses the exit status."""
from __future__ import annotations

import importlib
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Optional

from audit import registry
from audit.gate import baseline as baselines
from audit.gate.outputs import add_audit, write_audit_files, write_gate_files, write_index
from audit.gate.progress import display
from audit.kinds.base import AuditKind, Settings, plural
from audit.probes.errors import UsageError
from audit.probes.results import GateResult
from audit.probes.run.processes import Interrupted
from audit.reports.common import one_line


@dataclass
class GateOptions:
    """How the gate reports: the CLI flags every audit shares."""

    junit_xml: Optional[str] = None
    baseline: Optional[str] = None
    update_baseline: bool = False
    quiet: bool = False


@dataclass
class Outcome:
    """One audit run as a gate: the result, its baseline state, the files written."""

    kind: AuditKind
    result: Any
    state: Optional[baselines.BaselineState] = None
    paths: dict[str, Any] = field(default_factory=dict)
    write_error: Optional[str] = None  # the reports could not be written (the verdict stands)

    @property
    def error(self) -> Optional[str]:
        return getattr(self.result, "error", None)

    @property
    def failed(self) -> bool:
        if self.state is not None:
            return bool(self.state.regressions)
        return bool(self.kind.failing(self.result))


def _warm_charts() -> None:
    """Import the charts' matplotlib in a background thread while the engine waits on its
    runs, so the reports do not pay for it after them (best effort: the HTML imports it anyway)."""
    def load() -> None:
        try:
            importlib.import_module("audit.reports.charts")
        except Exception:  # the report's own import will say what is wrong
            pass

    threading.Thread(target=load, name="audit-warm-charts", daemon=True).start()


def run_kind(kind: AuditKind, s: Settings, quiet: bool = False) -> Any:
    """Run one audit's engine with a progress line."""
    _warm_charts()
    bar = display(quiet)
    try:
        return kind.run(s, bar)
    finally:
        if bar is not None:
            bar.close()


def audit_one(kind: AuditKind, s: Settings, opts: GateOptions) -> Outcome:
    """Run one audit, compare it with the baseline (when one is in use) and write its
    reports into ``s.out``. A missing baseline is found before any run."""
    if opts.baseline and not opts.update_baseline:
        baselines.read_baseline(opts.baseline)
    result = run_kind(kind, s, opts.quiet)
    state = baselines.apply_baseline(kind, result, opts.baseline, opts.update_baseline,
                                     s.tolerances or None)
    out = kind.report_folder(s)
    try:
        os.makedirs(out, exist_ok=True)
        paths = write_audit_files(out, kind, result)
        gate = GateResult()
        add_audit(gate, kind, result, state)
        paths.update(write_gate_files(out, gate, opts.junit_xml, {kind.name: result}))
    except OSError as exc:  # the verdict is not lost: the CLI prints it, and why
        return Outcome(kind, result, state, {},
                       f"the reports could not be written to {out}: {exc.strerror or exc}")
    return Outcome(kind, result, state, paths)


def write_partial(out: str, kind: AuditKind, result: Any) -> Optional[str]:
    """An interrupted audit's reports of what was measured; the HTML's path (None: failed)."""
    try:
        return write_audit_files(out, kind, result)["html"]
    except OSError:
        return None


def verdict_line(kind: AuditKind, result: Any, report_path: Optional[str],
                 state: Optional[baselines.BaselineState] = None) -> str:
    """One line: the audit, PASS/FAIL/ERROR, what was found, and the report path."""
    status, title = kind.headline(result)
    text = title + kind.verdict_detail(result)
    if state is not None and status != "error":
        status = "fail" if state.regressions else "pass"
        text += (f"; {plural(len(state.regressions), 'regression')} against the baseline"
                 if state.regressions else "; no regressions against the baseline")
    elif state is None and status == "pass":
        failing = kind.failing(result)
        if failing:  # a check that is not the verdict's own failed (latent = "fail", ...)
            status = "fail"
            text += "; failed: " + ", ".join(c.name for c in failing)
    line = f"audit {kind.name}: {status.upper()} {text}"
    if report_path:
        line += f" -- report: {report_path}"
    return one_line(line)


def failed_check_lines(kind: AuditKind, result: Any,
                       state: Optional[baselines.BaselineState]) -> list[Any]:
    """When the headline says PASS but a check failed (the exit status is then 1), the lines
    that say which check failed and why; none otherwise."""
    if state is not None or kind.headline(result)[0] != "pass":
        return []
    lines = []
    for check in kind.failing(result):
        at = f" (at {check.where})" if check.where else ""
        lines.append("  - " + one_line(f"{check.name}: {check.message}{at}"))
    return ["Failed checks (the exit status is 1):", *lines] if lines else []


def gate_verdict_line(gate: GateResult, report_path: Optional[str]) -> str:
    """The one line ``audit check --quiet`` prints."""
    failed = [c for c in gate.checks if not c.passed and not c.skipped]
    if failed:
        names = ", ".join(f"{c.audit}: {c.name}" for c in failed[:4])
        if len(failed) > 4:
            names += ", ..."
        line = f"audit check: FAIL {len(failed)} of {len(gate.checks)} checks failed ({names})"
    else:
        line = f"audit check: PASS all {len(gate.checks)} checks passed"
        skipped = sum(1 for c in gate.checks if c.skipped)
        if skipped:
            line += f" ({skipped} accepted or skipped)"
    if report_path:
        line += f" -- report: {report_path}"
    return " ".join(line.split())


@dataclass
class CheckOutcome:
    """``audit check``: every enabled audit's result, the gate, the files written."""

    gate: GateResult
    results: dict[str, Any]  # audit name -> result
    index: str
    baseline_written: Optional[str] = None
    notes: list[Any] = field(default_factory=list)

    @property
    def errors(self) -> list[str]:
        return [f"audit {a}: {r.error}" for a, r in self.results.items()
                if getattr(r, "error", None)]


def _baseline_doc(path: Optional[str], update: bool, kinds: list[AuditKind]) -> Optional[dict[str, Any]]:
    if not path:
        return None
    if update:
        return baselines.load_for_update(path)
    doc = baselines.read_baseline(path)  # fail before minutes of training
    for kind in kinds:
        if not isinstance(doc.get(kind.name), dict):
            raise UsageError(f"baseline {path} has no {kind.name} snapshot; run with "
                             "--update-baseline to record it")
    return doc


def check_all(kinds: list[Any], settings: dict[str, Any], out: str, opts: GateOptions,
              baseline: Optional[str]) -> CheckOutcome:
    """Run ``kinds`` (with ``settings``: name -> Settings), apply the baseline, write every
    audit's reports, ``index.html``, ``summary.md`` and JUnit into ``out``."""
    if opts.update_baseline and not baseline:
        baseline = baselines.DEFAULT_BASELINE
    doc = _baseline_doc(baseline, opts.update_baseline, kinds)
    results: dict[str, Any] = {}
    try:
        for kind in kinds:
            results[kind.name] = run_kind(kind, settings[kind.name], opts.quiet)
    except Interrupted as exc:  # the audits finished, and what the current one measured
        if exc.partial is not None:
            results[kinds[len(results)].name] = exc.partial
        exc.report = _write_interrupted(out, [k for k in kinds if k.name in results], results)
        raise
    os.makedirs(out, exist_ok=True)
    gate, notes = GateResult(), []
    for kind in kinds:
        write_audit_files(out, kind, results[kind.name])
        state = None
        if doc is not None:
            assert baseline is not None  # the doc was read from it
            state = baselines.compare(kind, results[kind.name], doc, baseline,
                                      opts.update_baseline, settings[kind.name].tolerances or None)
            notes += state.notes
        add_audit(gate, kind, results[kind.name], state, prefix=True)
    written = None
    if doc is not None and opts.update_baseline:
        assert baseline is not None  # the doc was read from it
        baselines.write_baseline(baseline, doc)
        written = baseline
    index = write_index(out, gate)
    write_gate_files(out, gate, opts.junit_xml, results)
    return CheckOutcome(gate, results, index, written, notes)


def _write_interrupted(out: str, kinds: list[Any], results: dict[str, Any]) -> Optional[str]:
    """``audit check`` stopped by a signal: the reports of the audits measured so far and
    the index (no baseline is read or written); the index's path, or None."""
    if not kinds:
        return None
    try:
        os.makedirs(out, exist_ok=True)
        gate = GateResult()
        for kind in kinds:
            write_audit_files(out, kind, results[kind.name])
            add_audit(gate, kind, results[kind.name], None, prefix=True)
        return write_index(out, gate)
    except OSError:
        return None


def enabled_kinds(audits: list[str]) -> list[Any]:
    """The kinds ``[tool.audit] audits`` names (when it names none, those checked by default)."""
    if audits:
        return [registry.get(name) for name in audits]
    return [kind for kind in registry.KINDS if kind.checked_by_default]
