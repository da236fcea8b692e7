"""The compare audit as a kind: ``audit compare TARGET_A TARGET_B``; ``[tool.audit.compare]``
(``baseline``, ``candidate``, ``seeds``, ...); the checks (runs completed, candidate not worse),
the baseline snapshot and regressions, and the reporters. The first positional (``target``) is
the baseline; ``[tool.audit.compare] baseline`` sets it too, above ``[tool.audit] target``."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable, Optional

from audit import config
from audit.probes.progress import Reporter
from audit.kinds.base import AuditKind, Regression, Settings, failing_names, positive_arg, rounded
from audit.kinds.variance import runs_check
from audit.probes.errors import TargetError, UsageError
from audit.probes.results import Check
from audit.probes.results.variance import DIRECTIONS, CompareResult
from audit.reports import html, terminal
from audit.reports.common import compare_headline, compare_sentence, fmt_num

TOLERANCES: dict[str, Any] = {}


@dataclass
class CompareSettings(Settings):
    candidate: Optional[str] = None  # TARGET_B; ``target`` is TARGET_A, the baseline
    seeds: int = 8
    steps: int = 50
    jobs: int = 1
    metric: Optional[str] = None  # default: the first metric evaluate() gives, else "loss"
    direction: Optional[str] = None  # default: from the metric's name
    alpha: float = 0.05


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("candidate", nargs="?", default=None,
                   help="TARGET_B, the candidate compared against TARGET (the baseline)")
    p.add_argument("--seeds", type=positive_arg, default=None,
                   help="paired seeds per variant (default 8; 6 or more can reach p < 0.05)")
    p.add_argument("--steps", type=positive_arg, default=None,
                   help="training steps per run (default 50)")
    p.add_argument("--metric", default=None,
                   help="the metric to compare (default: evaluate()'s first, else loss)")
    p.add_argument("--direction", choices=DIRECTIONS, default=None,
                   help="is a lower or a higher metric better (default: from its name)")
    p.add_argument("--jobs", type=positive_arg, default=None, help="runs at once (default 1)")


def _spec(key: str) -> Callable[[config.Checker, Any], str]:
    """A checker of a target spec under ``key`` (paths relative to the working folder)."""
    def check(chk: config.Checker, value: Any) -> str:
        from audit.probes.run.target import parse_spec

        expected = "a string 'path/to/file.py:NAME[,key=value...]' or 'package.module:NAME'"
        if not isinstance(value, str):
            chk.fail("tool.audit.compare", key, expected, value)
        try:
            parse_spec(value)
        except TargetError:
            chk.fail("tool.audit.compare", key, expected, value)
        return value.strip()
    return check


def check_table(chk: config.Checker, table: dict[str, Any]) -> dict[str, Any]:
    rules = {"seeds": config.positive_int(2), "steps": config.positive_int(),
             "jobs": config.positive_int(),
             "metric": ((lambda v: isinstance(v, str) and bool(v.strip())), "a metric name"),
             "direction": ((lambda v: v in DIRECTIONS), "'lower' or 'higher'"),
             "alpha": ((lambda v: config.is_number(v) and 0 < v < 1), "a number between 0 and 1")}
    special = {"baseline": _spec("baseline"), "candidate": _spec("candidate")}
    out = config.check_table(chk, "compare", table, rules, special)
    if "baseline" in out:  # the baseline is the kind's target
        out["target"] = out.pop("baseline")
    return out


def run(s: CompareSettings, progress: Reporter = None) -> CompareResult:
    from audit.probes.variance.compare import CompareOptions, audit_compare

    if not s.candidate:
        raise UsageError("audit compare needs two targets: audit compare TARGET_A TARGET_B "
                         "(or baseline and candidate in [tool.audit.compare])")
    opts = CompareOptions(
        baseline=s.target, candidate=s.candidate, seeds=s.seeds, steps=s.steps, seed=s.seed,
        metric=s.metric, direction=s.direction, alpha=s.alpha, jobs=s.jobs, device=s.device,
        input_shape=s.input_shape, num_classes=s.num_classes, cwd=s.cwd, executor=s.executor,
        ray_address=s.ray_address)
    try:
        return audit_compare(opts, progress)
    except TargetError as exc:
        raise UsageError(f"audit compare: {exc}") from None


def checks(result: CompareResult) -> list[Check]:
    worse = result.verdict == "worse"
    return [runs_check("compare", result.runs, result.error),
            Check("compare", "candidate not worse", not worse, compare_sentence(result),
                  "keep the baseline's setting, or look for why the candidate trains worse"
                  if worse else "")]


def snapshot(result: CompareResult) -> dict[str, Any]:
    return {
        "settings": {"seeds": result.seeds, "steps": result.steps, "seed": result.seed,
                     "metric": result.metric, "a": result.a.target, "b": result.b.target},
        "error": result.error, "verdict": result.verdict,
        "mean_delta": rounded(result.mean_delta), "p_value": rounded(result.p_value),
        "failing_checks": failing_names(checks(result)),
    }


def regressions(base: dict[str, Any], now: dict[str, Any], tolerances: dict[str, Any]) -> list[Regression]:
    out: list[Regression] = []
    if now.get("error") and not base.get("error"):
        out.append((f"the comparison failed: {now['error']}", None))
    if base.get("verdict") != "worse" and now.get("verdict") == "worse":
        out.append((f"the candidate is now significantly worse (was {base.get('verdict')})", None))
    if base.get("verdict") == "better" and now.get("verdict") == "no_difference":
        out.append(("the candidate is no longer detectably better", None))
    return out


def verdict_detail(result: CompareResult) -> str:
    return (f" ({result.metric} change {fmt_num(result.mean_delta)}, p = "
            f"{fmt_num(result.p_value)}, {len(result.deltas)} paired seeds)")


def index(result: CompareResult) -> tuple[Any, ...]:
    return compare_sentence(result), "verdict", result.verdict


KIND = AuditKind(
    name="compare", help="is the candidate (TARGET_B) better than the baseline by more than "
                         "seed noise",
    settings=CompareSettings, add_arguments=add_arguments, check_table=check_table,
    tolerances=TOLERANCES, run=run, checks=checks, snapshot=snapshot, regressions=regressions,
    headline=compare_headline, verdict_detail=verdict_detail, summary=terminal.compare_summary,
    html=html.compare_html, result_type=CompareResult, index=index)
