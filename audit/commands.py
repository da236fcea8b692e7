"""What each CLI command does once its arguments are parsed: settle the settings (flags over
``[tool.audit]`` over defaults), run the audit, write every report, print the summary, and
choose the exit status."""
from __future__ import annotations

import os
import sys
from typing import Optional

from audit.cli import EXIT_FOUND, EXIT_OK, EXIT_USAGE, UsageError

DEFAULTS = {
    "common": {"target": None, "seed": 0, "device": "auto", "out": "audit-report"},
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
                "input_shape", "num_classes"):
        value = getattr(args, key, None)
        if value is not None:
            merged[key] = value
    if getattr(args, "no_attribution", False):
        merged["attribution"] = False
    merged["config_path"] = cfg.path
    return merged


def _progress(quiet: bool):
    """A tqdm-style status line on a terminal; silence elsewhere (CI logs stay clean)."""
    if quiet or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    bar = tqdm(total=None, bar_format="{desc}", file=sys.stderr, leave=False)

    def say(message: str) -> None:
        bar.set_description_str(f"audit: {message}")

    say.close = bar.close
    return say


def _write_reports(out: str, audit: str, result, junit: Optional[str]):
    from audit import gate

    return gate.write_reports(out, audit, result, junit_path=junit)


def determinism(args, script: Optional[list]) -> int:
    from audit.orchestrate import DeterminismOptions, TargetFailed, audit_determinism
    from reports import terminal

    s = settings(args, "determinism")
    if script is not None:
        from audit.script_runner import validate

        validate(script, os.getcwd())  # a bad command is one line before any run starts
        s["target"] = None
    opts = DeterminismOptions(
        target=s["target"], runs=s["runs"], steps=s["steps"], seed=s["seed"], device=s["device"],
        input_shape=s.get("input_shape"), num_classes=s.get("num_classes"), jobs=s["jobs"],
        attribute=s["attribution"], script=script, cwd=os.getcwd())
    if opts.runs < 2:
        raise UsageError("--runs must be 2 or more: a comparison needs two runs")
    progress = _progress(args.quiet)
    try:
        result = audit_determinism(opts, progress=progress)
    except TargetFailed as exc:
        raise UsageError(f"audit determinism: {exc}") from None
    finally:
        if progress is not None:
            progress.close()
    return _finish(args, s, "determinism", result, terminal.determinism_summary)


def init(args) -> int:
    from audit.target import TargetError, load_target
    from audit.worker import resolve_device, seed_everything
    from probes.init_audit import run_init
    from reports import terminal

    s = settings(args, "init")
    schemes = s.get("schemes")
    if isinstance(schemes, str):
        schemes = [x.strip() for x in schemes.split(",") if x.strip()]
    try:
        device = resolve_device(s["device"])
    except RuntimeError as exc:
        raise UsageError(f"audit init: {exc}") from None
    seed_everything(s["seed"])
    try:
        setup = load_target(s["target"], input_shape=s.get("input_shape"),
                            num_classes=s.get("num_classes"), seed=s["seed"],
                            batches=max(s["steps"], 1))
    except TargetError as exc:
        raise UsageError(f"audit init: {exc}") from None
    progress = _progress(args.quiet)
    try:
        result = run_init(setup, schemes=schemes, steps=s["steps"], seed=s["seed"],
                          device=str(device), thresholds=s.get("thresholds") or None,
                          progress=progress, target=s["target"] or "audit.example:build (built-in)")
    except ValueError as exc:  # unknown scheme or threshold
        raise UsageError(f"audit init: {exc}") from None
    finally:
        if progress is not None:
            progress.close()
    return _finish(args, s, "init", result, terminal.init_summary)


def _finish(args, s: dict, audit: str, result, summary) -> int:
    from audit import gate

    out = s["out"]
    regressions = None
    if args.baseline or args.update_baseline:
        regressions = gate.apply_baseline(audit, result, args.baseline, args.update_baseline,
                                          s.get("tolerances"))
    paths = _write_reports(out, audit, result, args.junit_xml)
    report = paths.get("html")
    if args.quiet:
        print(gate.verdict_line(audit, result, report))
    else:
        print(summary(result, report))
    if regressions:
        print("Regressions against the baseline:\n" + "\n".join(f"  - {r}" for r in regressions))
    if result.error:
        print(f"audit {audit}: {result.error}", file=sys.stderr)
        return EXIT_OK if args.exit_zero else EXIT_USAGE
    failed = (not result.passed) if regressions is None else bool(regressions)
    if args.exit_zero:
        return EXIT_OK
    return EXIT_FOUND if failed else EXIT_OK


def check(args) -> int:
    from audit import gate

    return gate.check(args)
