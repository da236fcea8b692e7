"""What each CLI command does once its arguments are parsed: settle the settings (flags over
``[tool.audit]`` over defaults), run the audit, write every report, print the summary, and
choose the exit status."""
from __future__ import annotations

import os
import sys
from typing import Optional

from audit.cli import EXIT_FOUND, EXIT_OK, EXIT_USAGE, UsageError
from audit.probes.runs import DEFAULT_TIMEOUT, Interrupted

DEFAULTS = {
    "common": {"target": None, "seed": 0, "device": "auto", "out": "audit-report",
               "timeout": DEFAULT_TIMEOUT},
    "determinism": {"runs": 2, "steps": 20, "jobs": 1, "attribution": True},
    "init": {"steps": 5, "schemes": None, "thresholds": {}},
}


def settings(args, audit: str) -> dict:
    """Defaults, then ``[tool.audit]`` (and its ``[tool.audit.<audit>]`` table), then flags."""
    from audit import config

    try:
        cfg = config.load(getattr(args, "config", None))
    except config.ConfigError as exc:
        raise UsageError(str(exc)) from None
    merged = {**DEFAULTS["common"], **DEFAULTS.get(audit, {})}
    merged.update({k: v for k, v in cfg.common.items()})
    merged.update(cfg.section(audit))
    for key in ("target", "seed", "device", "out", "steps", "runs", "jobs", "schemes",
                "input_shape", "num_classes", "timeout"):
        value = getattr(args, key, None)
        if value is not None:
            merged[key] = value
    if getattr(args, "no_attribution", False):
        merged["attribution"] = False
    merged["config_path"] = cfg.path
    return merged


def _run(args, audit: str, s: dict):
    from audit import gate
    from audit.progress import display

    if args.baseline and not args.update_baseline:
        gate.read_baseline(args.baseline)  # a missing baseline is a usage error before any run
    progress = display(args.quiet)
    try:
        return gate.run_audit(audit, s, progress=progress)
    finally:
        if progress is not None:
            progress.close()


def determinism(args, script: Optional[list]) -> int:
    from audit.reports import terminal

    s = settings(args, "determinism")
    if script is not None:
        from audit.probes.script_runner import validate

        validate(script, os.getcwd())  # a bad command is one line before any run starts
        s["target"] = None
    s["script"] = script
    return _audit(args, s, "determinism", terminal.determinism_summary)


def init(args) -> int:
    from audit.reports import terminal

    s = settings(args, "init")
    return _audit(args, s, "init", terminal.init_summary)


def _audit(args, s: dict, audit: str, summary) -> int:
    """Hold the report folder (checked before any run), run the audit, write its reports; on
    an interrupt, write what was measured and let the interrupt go on to the CLI."""
    held = _hold(s["out"])
    try:
        try:
            result = _run(args, audit, s)
        except Interrupted as exc:
            if exc.partial is not None:
                exc.report = _write_partial(s["out"], audit, exc.partial)
            raise
        return _finish(args, s, audit, result, summary)
    finally:
        held.release()


def _hold(out: str):
    """The report folder, created if needed and locked (one audit writes to it at a time)."""
    from audit.reports.folder import FolderError, Held

    try:
        return Held(out)
    except FolderError as exc:
        raise UsageError(str(exc)) from None


def _write_partial(out: str, audit: str, result) -> Optional[str]:
    from audit import gate

    try:
        return gate.write_reports(out, audit, result).get("html")
    except OSError as exc:
        print(f"audit {audit}: the partial reports could not be written: {exc}", file=sys.stderr)
        return None


def _finish(args, s: dict, audit: str, result, summary) -> int:
    """Write every report, print the summary, and choose the exit status from the same checks
    the gate, the JUnit file and the pytest fixtures use."""
    from audit import gate

    regressions = None
    if args.baseline or args.update_baseline:
        regressions = gate.apply_baseline(audit, result, args.baseline, args.update_baseline,
                                          s.get("tolerances"))
    try:
        paths = gate.write_reports(s["out"], audit, result, junit_path=args.junit_xml)
    except OSError as exc:  # the verdict is not lost: print it, and why the files are missing
        print(gate.verdict_line(audit, result, None))
        print(f"audit {audit}: the reports could not be written to {s['out']}: {exc}",
              file=sys.stderr)
        return EXIT_USAGE
    report = paths.get("html")
    if args.quiet:
        print(gate.verdict_line(audit, result, report))
    else:
        print(summary(result, report).rstrip("\n"))
    if regressions:
        print("Regressions against the baseline:\n" + "\n".join(f"  - {r}" for r in regressions))
    if result.error:
        print(f"audit {audit}: {result.error}", file=sys.stderr)
        return EXIT_OK if args.exit_zero else EXIT_USAGE
    if regressions is not None:
        failed = bool(regressions)
    else:
        failed = any(not c.passed and not c.skipped for c in gate.checks_for(audit, result))
    if args.exit_zero:
        return EXIT_OK
    return EXIT_FOUND if failed else EXIT_OK


def check(args) -> int:
    from audit import gate

    held = _hold(settings(args, "determinism")["out"])  # "out" is common to every audit
    try:
        return gate.check(args)
    finally:
        held.release()
