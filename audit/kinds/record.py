"""``audit record`` as a kind: train the target (or script) twice in detail and write the
reference file ``audit diff --against`` reads (``--out FILE``, default
``audit-reference.audit``); a target that disagrees with itself is refused (exit 1). Its
own report pages go to ``audit-report/``, not beside the reference."""
from __future__ import annotations

from typing import Any
import argparse
import os
from dataclasses import dataclass

from audit import config
from audit.probes.progress import Reporter
from audit.kinds.base import AuditKind, Regression, Settings, positive_arg
from audit.probes.errors import UsageError
from audit.probes.results import Check
from audit.probes.results.diff import RecordResult
from audit.reports import html, terminal
from audit.reports.common import record_headline, record_sentence

REFERENCE = "audit-reference.audit"
REPORTS = "audit-report"


@dataclass
class RecordSettings(Settings):
    steps: int = 20
    out: str = REFERENCE  # the reference file (the contract's --out FILE)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=positive_arg, default=None,
                   help="training steps to record (default 20)")


def check_table(chk: config.Checker, table: dict[str, Any]) -> dict[str, Any]:
    return config.check_table(chk, "record", table, {"steps": config.positive_int()})


def out_problem(path: str) -> str:
    """Why the reference file cannot be written at ``path`` (what to do included), or ""."""
    if os.path.isdir(path):
        return f"is a folder; give the reference file's path (default {REFERENCE})"
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):  # the nearest folder that exists; the rest is made
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        return f"lies under {folder}, which is a file; give a path in a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"cannot be written: {folder} is not writable; give a path you can write to"
    if os.path.exists(path) and not os.path.isfile(path):
        return "is not a regular file; give the reference file's path"
    return ""


def run(s: RecordSettings, progress: Reporter = None) -> RecordResult:
    from audit.probes.run.launcher import TargetFailed
    from audit.probes.diff import reference
    from audit.probes.diff.engine import DiffOptions, record

    problem = out_problem(s.out)
    if problem:  # before any training: the runs' numbers would be lost at the end
        raise UsageError(f"audit record: --out {s.out} {problem}")
    opts = DiffOptions(target_a=s.target, script_a=s.script, steps=s.steps, seed=s.seed,
                       device=s.device, input_shape=s.input_shape, num_classes=s.num_classes,
                       cwd=s.cwd, executor=s.executor, ray_address=s.ray_address)
    try:
        result, ref = record(opts, progress=progress)
    except TargetFailed as exc:
        raise UsageError(f"audit record: {exc}") from None
    if ref is not None:
        result.size_bytes = reference.save(ref, s.out)
        result.path = s.out
    return result


def checks(result: RecordResult) -> list[Check]:
    ok = result.verdict == "recorded"
    return [Check("record", "target repeats itself", ok, record_sentence(result),
                  "" if ok else "run `audit determinism` on the target and fix what it finds")]


def snapshot(result: RecordResult) -> dict[str, Any]:
    return {"settings": {"steps": result.steps, "seed": result.seed, "device": result.device,
                         "target": result.target}, "verdict": result.verdict}


def regressions(base: dict[str, Any], now: dict[str, Any], tolerances: dict[str, Any]) -> list[Regression]:
    if base.get("verdict") == "recorded" and now.get("verdict") != "recorded":
        return [("the target no longer repeats itself", None)]
    return []


def index(result: RecordResult) -> tuple[Any, ...]:
    return record_sentence(result), "", ""


def report_folder(s: Settings) -> str:
    return REPORTS


KIND = AuditKind(
    name="record", help="record a reference file of the training's numbers for 'audit diff --against'",
    settings=RecordSettings, add_arguments=add_arguments, check_table=check_table, tolerances={},
    run=run, checks=checks, snapshot=snapshot, regressions=regressions, headline=record_headline,
    verdict_detail=lambda result: "", summary=terminal.record_summary, html=html.record_html,
    result_type=RecordResult, index=index, script_mode=True, report_folder=report_folder)
