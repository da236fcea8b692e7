"""The CI gate: checks drawn from each audit kind, baselines, report files, CI side effects
and ``audit check``. The per-audit knowledge lives in the kinds (:mod:`audit.registry`); this
package only loops over them."""
from __future__ import annotations

from typing import Any, Optional, Union

from audit import registry
from audit.gate import baseline as baselines
from audit.gate import outputs, run
from audit.gate.baseline import (BASELINE_SCHEMA, DEFAULT_BASELINE, REGRESSION_CHECK,
                                 BaselineState, read_baseline, write_baseline)
from audit.gate.ci import print_annotations
from audit.gate.run import (CheckOutcome, GateOptions, Outcome, audit_one, check_all,
                            enabled_kinds, failed_check_lines, gate_verdict_line)
from audit.kinds.base import AuditKind, Regression
from audit.probes.results import Check

__all__ = ["BASELINE_SCHEMA", "DEFAULT_BASELINE", "REGRESSION_CHECK", "BaselineState",
           "CheckOutcome", "GateOptions", "Outcome", "apply_baseline", "audit_one", "check_all",
           "checks_for", "enabled_kinds", "failed_check_lines", "gate_verdict_line",
           "print_annotations",
           "read_baseline", "regressions", "snapshot", "verdict_line", "write_baseline",
           "write_reports"]


def _kind(audit: Union[str, AuditKind]) -> AuditKind:
    return registry.get(audit) if isinstance(audit, str) else audit


def checks_for(audit: Union[str, AuditKind], result: Any) -> list[Check]:
    """The checks of one audit's result (``audit``: a kind or its name)."""
    return _kind(audit).checks(result)


def snapshot(audit: Union[str, AuditKind], result: Any) -> dict[str, Any]:
    """What a baseline keeps of one audit's result."""
    return _kind(audit).snapshot(result)


def regressions(audit: Union[str, AuditKind], base: dict[str, Any], now: dict[str, Any],
                tolerances: dict[str, Any]) -> list[Regression]:
    """``(text, where)`` pairs: how snapshot ``now`` is worse than ``base``."""
    return _kind(audit).regressions(base, now, tolerances)


def apply_baseline(audit: Union[str, AuditKind], result: Any, path: Optional[str], update: bool,
                   tolerances: Optional[dict[str, Any]] = None) -> Optional[BaselineState]:
    """Compare one result with the baseline at ``path`` (or record it when ``update``)."""
    return baselines.apply_baseline(_kind(audit), result, path, update, tolerances)


def write_reports(out: str, audit: Union[str, AuditKind], result: Any, junit_path: Optional[str] = None,
                  state: Optional[BaselineState] = None) -> dict[str, Any]:
    """One audit's reports into ``out`` (see :func:`audit.gate.outputs.write_reports`)."""
    return outputs.write_reports(out, _kind(audit), result, junit_path, state)


def verdict_line(audit: Union[str, AuditKind], result: Any, report_path: Optional[str],
                 state: Optional[BaselineState] = None) -> str:
    """One line: the audit, PASS/FAIL/ERROR, what was found, and the report path."""
    return run.verdict_line(_kind(audit), result, report_path, state)
