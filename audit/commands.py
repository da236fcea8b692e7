"""What each command does once its arguments are parsed: settle the settings, run through the
gate, print the summary, and say which exit status the outcome deserves."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Optional

from audit import gate, settings
from audit.gate.run import write_partial
from audit.kinds.base import AuditKind
from audit.probes.errors import ExitCode, UsageError
from audit.probes.run.processes import Interrupted
from audit.reports import terminal
from audit.reports.folder import FolderError, Held

#: argparse names that are gate options or CLI switches, not settings.
_NOT_SETTINGS = {"command", "config", "debug", "quiet", "junit_xml", "baseline",
                 "update_baseline", "exit_zero"}


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS}


def _options(args: argparse.Namespace) -> gate.GateOptions:
    return gate.GateOptions(junit_xml=args.junit_xml, baseline=args.baseline,
                            update_baseline=args.update_baseline, quiet=args.quiet)


def _status(failed: bool, error: bool, exit_zero: bool) -> ExitCode:
    if exit_zero:
        return ExitCode.OK
    if error:
        return ExitCode.USAGE
    return ExitCode.FOUND if failed else ExitCode.OK


def _hold(out: str) -> Held:
    """The report folder, created and locked before any run (one audit writes it at a time)."""
    try:
        return Held(out)
    except FolderError as exc:
        raise UsageError(str(exc)) from None


def audit(kind: AuditKind, args: argparse.Namespace, script: Optional[list[str]]) -> ExitCode:
    """``audit <kind> ...``: run one audit as a gate and print its summary."""
    s = settings.resolve(kind, settings.load_config(args.config), _flags(args))
    if script is not None:
        from audit.probes.script.torchrun import validate

        try:  # a bad command: one line before any run, naming the command that was run
            validate(script, os.getcwd(), kind.launchers)
        except UsageError as exc:
            raise UsageError(f"audit {kind.name}: {exc}") from None
        s = s.replace(target=None, script=script)
    held = _hold(kind.report_folder(s))
    try:
        try:
            outcome = gate.audit_one(kind, s, _options(args))
        except Interrupted as exc:  # what was measured is written, then the CLI says so
            if exc.partial is not None:
                exc.report = write_partial(kind.report_folder(s), kind, exc.partial)
            raise
        return _report(kind, args, outcome)
    finally:
        held.release()


def _report(kind: AuditKind, args: argparse.Namespace, outcome: gate.Outcome) -> ExitCode:
    if outcome.write_error:
        print(gate.verdict_line(kind, outcome.result, None, outcome.state))
        print(f"audit {kind.name}: {outcome.write_error}", file=sys.stderr)
        return ExitCode.USAGE
    report = outcome.paths.get("html")
    for note in (outcome.state.notes if outcome.state else []):
        print(note, file=sys.stderr)
    if args.quiet:
        print(gate.verdict_line(kind, outcome.result, report, outcome.state))
    else:
        print(kind.summary(outcome.result, report).rstrip("\n"))
        for line in gate.failed_check_lines(kind, outcome.result, outcome.state):
            print(line)
    if outcome.state is not None and outcome.state.regressions:
        print("Regressions against the baseline:\n"
              + "\n".join(f"  - {r}" for r in outcome.state.texts))
    if outcome.error:
        print(f"audit {kind.name}: {outcome.error}", file=sys.stderr)
    return _status(outcome.failed, bool(outcome.error), args.exit_zero)


def check(args: argparse.Namespace) -> ExitCode:
    """``audit check``: every audit ``[tool.audit]`` enables, with its settings."""
    cfg = settings.load_config(args.config)
    kinds = gate.enabled_kinds(cfg.audits)
    all_settings = {k.name: settings.resolve(k, cfg, _flags(args)) for k in kinds}
    if not kinds:
        raise UsageError("audit check: no audit is enabled; list some in [tool.audit] audits")
    out = all_settings[kinds[0].name].out
    held = _hold(out)
    try:
        outcome = gate.check_all(kinds, all_settings, out, _options(args),
                                 args.baseline or cfg.baseline)
    finally:
        held.release()
    for note in outcome.notes:
        print(note, file=sys.stderr)
    if args.quiet:
        print(gate.gate_verdict_line(outcome.gate, outcome.index))
    else:
        print(terminal.check_summary(outcome.gate), end="")
        print(f"\nReport: {outcome.index}")
        if outcome.baseline_written:
            print(f"Baseline written: {outcome.baseline_written}")
    for line in outcome.errors:
        print(line, file=sys.stderr)
    return _status(not outcome.gate.passed, bool(outcome.errors), args.exit_zero)
