"""The CI side effects of a gate run: ``$GITHUB_STEP_SUMMARY`` and ``::error`` annotations."""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Optional

from audit import registry
from audit.probes.results import Check, GateResult
from audit.reports.common import split_where
from audit.reports import github
from audit.reports.markdown import GITHUB_SUMMARY_LIMIT, summary_markdown

#: Leave at least this much of GitHub's step-summary cap unused by us.
SUMMARY_MARGIN = 16 * 1024
MIN_SUMMARY = 2 * 1024


def summary_budget() -> Optional[int]:
    """Bytes left for us in ``$GITHUB_STEP_SUMMARY`` (None when it is not set)."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    try:
        used = os.path.getsize(target)
    except OSError:
        used = 0
    return GITHUB_SUMMARY_LIMIT - SUMMARY_MARGIN - used


def append_step_summary(gate: GateResult) -> None:
    budget = summary_budget()
    if budget is None:
        return
    if budget < MIN_SUMMARY:
        print("audit: $GITHUB_STEP_SUMMARY is nearly full (1 MiB cap); the summary is only in "
              "summary.md", file=sys.stderr)
        return
    text = summary_markdown(gate, max_bytes=budget)
    try:
        with open(os.environ["GITHUB_STEP_SUMMARY"], "a", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        print(f"audit: could not append to $GITHUB_STEP_SUMMARY: {exc}", file=sys.stderr)


def github_where(where: Optional[str]) -> Optional[str]:
    """A place relative to the repository (``$GITHUB_WORKSPACE``) when it lies inside it."""
    if not where:
        return where
    path, line, col = split_where(where)
    workspace = os.environ.get("GITHUB_WORKSPACE")
    if not path or path.startswith("<") or not workspace:
        return where
    try:
        rel = os.path.relpath(os.path.abspath(path), workspace)
    except ValueError:
        return where
    if rel.startswith(".."):
        return where
    rel = rel.replace(os.sep, "/")
    return rel + (f":{line}" if line is not None else "") + (f":{col}" if col is not None else "")


def _candidates(checks: list[Check], results: dict[str, Any]) -> list[Check]:
    out = []
    for check in checks:
        if check.passed or check.skipped:
            continue
        result = results.get(check.audit)
        expanded = registry.get(check.audit).annotations(check, result) if result is not None \
            else [check]
        out += [dataclasses.replace(c, where=github_where(c.where)) for c in expanded]
    return out


def annotation_checks(checks: list[Check], results: dict[str, Any]) -> list[Check]:
    """The failed checks, one per place; ``runs agree`` (the symptom) is left out where a
    check that names the cause already points."""
    out = _candidates([c for c in checks if c.name != "runs agree"], results)
    seen = {c.where for c in out if c.where}
    for check in _candidates([c for c in checks if c.name == "runs agree"], results):
        if check.where not in seen:
            out.append(check)
    return out


def print_annotations(checks: list[Check], results: dict[str, Any]) -> None:
    if os.environ.get("GITHUB_ACTIONS") != "true":
        return
    for line in github.annotations(annotation_checks(checks, results)):
        print(line)
    sys.stdout.flush()
