"""The variance audit as a kind: settings, flags, ``[tool.audit.variance]``, the run, the checks
(runs completed, seeds control the randomness, sources separable), the baseline snapshot and
regressions (the all-sources std of a metric growing), and the reporters."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Optional

from audit import config
from audit.probes.progress import Reporter
from audit.kinds.base import (AuditKind, Regression, Settings, failing_names, plural, positive_arg,
                              rounded)
from audit.probes.errors import TargetError, UsageError
from audit.probes.results import Check
from audit.probes.results.variance import DIRECTIONS, VARIANCE_SOURCES, VarianceResult
from audit.reports import html, terminal
from audit.reports.common import fmt_num, one_line, variance_headline, variance_sentence
from audit.probes.results.records import Status

#: Baseline tolerance: a metric's all-sources std may grow by this factor.
TOLERANCES = {"std_ratio": 2.0}
SOURCES_EXPECTED = "an array or comma-separated string of init, data, augment, dropout"


@dataclass
class VarianceSettings(Settings):
    seeds: int = 8
    steps: int = 50
    jobs: int = 1
    sources: Optional[list[Any]] = None  # None: all four
    metric: Optional[str] = None  # the metric the report leads with (default: first reported)
    direction: Optional[str] = None  # for ``metric``; default from its name

    def __post_init__(self) -> None:
        if isinstance(self.sources, str):
            self.sources = config.string_list(self.sources)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", type=positive_arg, default=None,
                   help="seeds per source (default 8)")
    p.add_argument("--steps", type=positive_arg, default=None,
                   help="training steps per run (default 50)")
    p.add_argument("--sources", type=config.string_list, default=None,
                   help="comma-separated: init,data,augment,dropout (default all)")
    p.add_argument("--jobs", type=positive_arg, default=None, help="runs at once (default 1)")
    p.add_argument("--metric", default=None, help="the metric to lead with (default: the first)")
    p.add_argument("--direction", choices=DIRECTIONS, default=None,
                   help="is a lower or a higher --metric better (default: from its name)")


def check_sources(chk: config.Checker, table: str, value: Any) -> list[Any]:
    names = config.string_list(value)
    if not names or any(n not in VARIANCE_SOURCES for n in names):
        chk.fail(table, "sources", SOURCES_EXPECTED, value)
    return names


def check_table(chk: config.Checker, table: dict[str, Any]) -> dict[str, Any]:
    rules = {"seeds": config.positive_int(2), "steps": config.positive_int(),
             "jobs": config.positive_int(),
             "metric": ((lambda v: isinstance(v, str) and bool(v.strip())), "a metric name"),
             "direction": ((lambda v: v in DIRECTIONS), "'lower' or 'higher'")}
    special = {"sources": lambda c, v: check_sources(c, "tool.audit.variance", v),
               "tolerances": lambda c, v: config.check_tolerances(c, "variance", v, TOLERANCES,
                                                                  {"std_ratio": 1})}
    return config.check_table(chk, "variance", table, rules, special)


def run(s: VarianceSettings, progress: Reporter = None) -> VarianceResult:
    from audit.probes.variance.engine import VarianceOptions, audit_variance

    opts = VarianceOptions(
        target=s.target, seeds=s.seeds, steps=s.steps, seed=s.seed,
        sources=tuple(s.sources or VARIANCE_SOURCES), jobs=s.jobs, device=s.device,
        directions={s.metric: s.direction} if s.metric and s.direction else {},
        input_shape=s.input_shape, num_classes=s.num_classes, cwd=s.cwd, executor=s.executor,
        ray_address=s.ray_address)
    try:
        result = audit_variance(opts, progress)
    except TargetError as exc:
        raise UsageError(f"audit variance: {exc}") from None
    if s.metric and result.metrics and s.metric not in result.metrics:
        raise UsageError(f"audit variance: --metric {s.metric}: the runs report "
                         f"{', '.join(result.metrics)}; pick one")
    if s.metric in result.metrics:  # the chosen metric first, in every report
        result.metrics = {s.metric: result.metrics[s.metric],
                          **{k: v for k, v in result.metrics.items() if k != s.metric}}
    return result


# --------------------------------------------------------------------------- checks


def runs_check(audit: str, runs: list[Any], error: Optional[str]) -> Check:
    """``runs completed``: every run trained and gave finite metrics (shared with compare)."""
    bad = [r for r in runs if r.status != Status.OK]
    if error:
        return Check(audit, "runs completed", False, error)
    if not bad:
        return Check(audit, "runs completed", True, f"{plural(len(runs), 'run')} finished")
    first = bad[0]
    return Check(audit, "runs completed", False,
                 f"{plural(len(bad), 'run')} of {len(runs)} left out of the statistics; first: "
                 f"{first.group} seed {first.seed} {first.status}: {one_line(first.message)}",
                 "fix the error in the training code; the report lists every failed run", first.where)


def checks(result: VarianceResult) -> list[Check]:
    out = [runs_check("variance", result.runs, result.error)]
    if result.controlled is False:
        out.append(Check("variance", "seeds control the randomness", False,
                         f"runs with identical seeds differ (spread {fmt_num(result.control_spread)}): "
                         "randomness no seed reaches, so the split between sources is not "
                         "trustworthy", "run `audit determinism` on the target to find it"))
    else:
        out.append(Check("variance", "seeds control the randomness", True,
                         "runs with identical seeds gave identical metrics",
                         skipped=result.controlled is None))
    apart = [r for r in result.routing if not r.separable and r.source != "unreached"]
    if apart:
        out.append(Check("variance", "sources separable", True,
                         "; ".join(f"{r.source}: {r.how}" for r in apart), skipped=True))
    else:
        out.append(Check("variance", "sources separable", True,
                         "every source's seed is routed on its own"))
    return out


# --------------------------------------------------------------------------- baseline


def snapshot(result: VarianceResult) -> dict[str, Any]:
    return {
        "settings": {"seeds": result.seeds, "steps": result.steps, "seed": result.seed,
                     "device": result.device, "target": result.target},
        "error": result.error,
        "controlled": result.controlled,
        "metrics": {name: {src: {"mean": rounded(st.mean), "std": rounded(st.std)}
                           for src, st in mv.sources.items()}
                    for name, mv in result.metrics.items()},
        "failing_checks": failing_names(checks(result)),
    }


def regressions(base: dict[str, Any], now: dict[str, Any], tolerances: dict[str, Any]) -> list[Regression]:
    out: list[Regression] = []
    if now.get("error") and not base.get("error"):
        out.append((f"the variance audit failed: {now['error']}", None))
    if base.get("controlled") is not False and now.get("controlled") is False:
        out.append(("runs with identical seeds now differ: randomness no seed reaches", None))
    for name in sorted(set(base.get("failing_checks") or []) ^ set(now.get("failing_checks") or [])):
        if name in (now.get("failing_checks") or []):
            out.append((f"check now fails: {name}", None))
    ratio = tolerances.get("std_ratio", TOLERANCES["std_ratio"])
    for name, sources in (now.get("metrics") or {}).items():
        was = ((base.get("metrics") or {}).get(name) or {}).get("all", {}).get("std")
        cur = (sources.get("all") or {}).get("std")
        if was is not None and cur is not None and cur > max(was, 1e-12) * ratio:
            out.append((f"{name}: the seed-to-seed std grew to {cur:.4g} from {was:.4g} in "
                        f"the baseline (tolerance x{ratio:g})", None))
    return out


# --------------------------------------------------------------------------- reporters


def verdict_detail(result: VarianceResult) -> str:
    name = next(iter(result.metrics), None)
    if name is None:
        return ""
    st = result.metrics[name].sources.get("all")
    top = result.dominant.get(name)
    text = f" ({name}: seed std {fmt_num(st.std if st else None)}"
    return text + (f", mostly {top})" if top else ")")


def index(result: VarianceResult) -> tuple[Any, ...]:
    name = next(iter(result.metrics), None)
    text = variance_sentence(result, name) if name else (result.error or "")
    return text, "largest source", (result.dominant.get(name) or "") if name else ""


KIND = AuditKind(
    name="variance", help="how much each source of randomness (init, data, augment, dropout) "
                          "moves the metric",
    settings=VarianceSettings, add_arguments=add_arguments, check_table=check_table,
    tolerances=TOLERANCES, run=run, checks=checks, snapshot=snapshot, regressions=regressions,
    headline=variance_headline, verdict_detail=verdict_detail,
    summary=terminal.variance_summary, html=html.variance_html, result_type=VarianceResult,
    index=index)
