"""The diff audit as a kind: ``audit diff TARGET_A TARGET_B`` or ``audit diff [TARGET]
--against FILE`` (script mode with ``--against``), ``[tool.audit.diff]`` (``against``,
``steps``), the check (``numbers identical``), the baseline snapshot and regressions, and
the reporters."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, Optional

from audit import config
from audit.probes.progress import Reporter
from audit.kinds.base import AuditKind, Regression, Settings, failing_names, positive_arg, rounded
from audit.probes.errors import UsageError
from audit.probes.results import Check
from audit.probes.results.diff import DiffResult
from audit.reports import html, terminal
from audit.reports.common import diff_headline, diff_sentence, diff_where

#: Baseline tolerances: the largest relative loss difference may grow by this factor.
TOLERANCES = {"max_rel_diff": 10.0}

if TYPE_CHECKING:  # imported when the audit runs
    from audit.probes.diff.reference import Reference


@dataclass
class DiffSettings(Settings):
    steps: int = 8
    target_b: Optional[str] = None  # side b; with --against, TARGET is side b
    against: Optional[str] = None  # a reference file written by `audit record`


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target_b", nargs="?", default=None, metavar="TARGET_B",
                   help="the code after the change (TARGET is the code before)")
    p.add_argument("--steps", type=positive_arg, default=None,
                   help="training steps per side (default 8; with --against, the file's)")
    p.add_argument("--against", default=None, metavar="FILE",
                   help="compare TARGET (or the script) with a reference 'audit record' wrote")


def _check_against(chk: config.Checker, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        chk.fail("tool.audit.diff", "against", "the path of a reference file (a string)", value)
    root = os.path.dirname(os.path.abspath(chk.file))
    path = os.path.expanduser(value)
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(root, path))


def check_table(chk: config.Checker, table: dict[str, Any]) -> dict[str, Any]:
    tolerances = (lambda c, v: config.check_tolerances(c, "diff", v, TOLERANCES))
    return config.check_table(chk, "diff", table, {"steps": config.positive_int()},
                              {"against": _check_against, "tolerances": tolerances})


def run(s: DiffSettings, progress: Reporter = None) -> DiffResult:
    from audit.probes.run.launcher import TargetFailed
    from audit.probes.diff import reference
    from audit.probes.diff.engine import DiffOptions, diff, diff_against

    common: dict[str, Any] = dict(seed=s.seed, device=s.device, input_shape=s.input_shape,
                                  num_classes=s.num_classes, cwd=s.cwd, steps=s.steps,
                                  executor=s.executor, ray_address=s.ray_address)
    try:
        if s.against:
            if s.target_b:
                raise UsageError("audit diff: with --against give one TARGET (the code to "
                                 "compare with the file), not two")
            ref = _reference(reference, s.against)
            return diff_against(ref, DiffOptions(target_b=s.target, script_b=s.script, **common),
                                progress=progress)
        if s.script:
            raise UsageError("audit diff: script mode compares with a reference: "
                             "add --against FILE (write one with 'audit record -- python ...')")
        if s.target is None or s.target_b is None:
            raise UsageError("audit diff: give two targets, before and after "
                             "(audit diff old.py:build new.py:build), or --against FILE")
        return diff(DiffOptions(target_a=s.target, target_b=s.target_b, **common), progress=progress)
    except TargetFailed as exc:
        raise UsageError(f"audit diff: {exc}") from None


def _reference(reference: ModuleType, path: str) -> Reference:
    """The reference file at ``path``; its one-line refusal names the command."""
    try:
        return reference.load(path)
    except UsageError as exc:
        raise UsageError(f"audit diff: {exc}") from None


def checks(result: DiffResult) -> list[Check]:
    """One check, ``numbers identical``: the sides train bit for bit alike."""
    if result.error and result.first_difference is None:
        return [Check("diff", "numbers identical", False, result.error,
                      "fix the error in the training code; run `audit diff --debug`")]
    if result.verdict == "identical":
        return [Check("diff", "numbers identical", True, diff_sentence(result))]
    if result.verdict == "nondeterministic":
        fix = "run `audit determinism` on that side first: it disagrees with itself"
    elif result.likely_reason == "environment":
        fix = ("the code is the same: run where the reference was recorded (the environment "
               "changes in the report), or record a new reference here (`audit record --out FILE`)")
    else:
        fix = ("if the change is meant to move the numbers, record a new reference "
               "(`audit record --out FILE`)")
    return [Check("diff", "numbers identical", False, diff_sentence(result), fix)]


def snapshot(result: DiffResult) -> dict[str, Any]:
    d = result.first_difference
    return {
        "settings": {"steps": result.steps, "seed": result.seed, "device": result.device,
                     "a": result.a.target, "b": result.b.target, "mode": result.mode},
        "verdict": result.verdict,
        "error": result.error,
        "first_difference": None if d is None else {"step": d.step, "stage": d.stage, "module": d.module},
        "max_rel_diff": rounded(result.loss.max_rel_diff),
        "drift": result.drift,
        "failing_checks": failing_names(checks(result)),
    }


def regressions(base: dict[str, Any], now: dict[str, Any], tolerances: dict[str, Any]) -> list[Regression]:
    out: list[str] = []
    if now.get("error") and not base.get("error"):
        out.append(f"the diff failed: {now['error']}")
    if base.get("verdict") == "identical" and now.get("verdict") != "identical":
        out.append(f"the sides no longer agree ({now.get('verdict')})")
    if base.get("drift") == "rounding" and now.get("drift") == "material":
        out.append("the difference grew from rounding level to a material one")
    factor = tolerances.get("max_rel_diff")
    was, cur = base.get("max_rel_diff"), now.get("max_rel_diff")
    if factor is not None and was and cur and cur > was * factor:
        out.append(f"the largest relative loss difference grew from {was:.3g} to {cur:.3g} "
                   f"(tolerance x{factor:g})")
    return [(text, None) for text in out]


def verdict_detail(result: DiffResult) -> str:
    where = diff_where(result)
    return f" ({where})" if where else ""


def index(result: DiffResult) -> tuple[Any, ...]:
    return diff_sentence(result), "", ""


KIND = AuditKind(
    name="diff", help="do two versions (or the code and a recorded reference) train bit for bit alike?",
    settings=DiffSettings, add_arguments=add_arguments, check_table=check_table,
    tolerances=TOLERANCES, run=run, checks=checks, snapshot=snapshot, regressions=regressions,
    headline=diff_headline, verdict_detail=verdict_detail, summary=terminal.diff_summary,
    html=html.diff_html, result_type=DiffResult, index=index, script_mode=True)
