"""``audit variance`` and ``audit compare``: plan the runs, run them, and do the statistics.

Variance: for each source, ``seeds`` runs vary only that source's seed (``seed``, ``seed+1``,
...) with the others held at ``seed``; then ``seeds`` runs vary all of them together. The first
run of every group has identical settings: if those runs disagree, randomness that no seed
reaches is at work, and the result says so (``controlled: false``) instead of a wrong split.

The pieces both audits share (running the specs, reading the outcomes) are public here and
used by :mod:`.compare`.
"""
from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from audit.probes.errors import TargetError, UsageError
from audit.probes.progress import Progress, Reporter
from audit.probes.results.variance import (ALL, VARIANCE_SOURCES, MetricVariance, Routing,
                                           RunRecord, SourceStats, VarianceResult)
from audit.probes.run import executors
from audit.probes.variance import stats
from audit.probes.variance.runner import Pool, PoolOptions, RunOutcome, RunSpec
from audit.probes.results.records import Status
from audit.probes.run.target import label

_LOWER_WORDS = ("loss", "error", "err", "perplexity", "ppl", "mse", "mae", "rmse", "nll", "time")


def guess_direction(metric: str) -> str:
    """``lower`` for losses and errors, ``higher`` for anything else (accuracy, F1, ...)."""
    words = metric.lower().replace("-", "_").split("_")
    return "lower" if any(w in _LOWER_WORDS for w in words) or "loss" in metric.lower() else "higher"


@dataclass
class VarianceOptions:
    target: Optional[str] = None
    seeds: int = 8
    steps: int = 50
    seed: int = 0
    sources: tuple[Any, ...] = VARIANCE_SOURCES
    jobs: int = 1
    device: str = "auto"
    directions: dict[str, Any] = field(default_factory=dict)  # metric -> "lower" | "higher"
    input_shape: Optional[list[Any]] = None
    num_classes: Optional[int] = None
    cwd: Optional[str] = None
    executor: str = "local"  # where the runs execute: local or ray
    ray_address: Optional[str] = None


def validate_seeds(seeds: int, steps: int, jobs: int) -> None:
    """Refuse, before any training, counts that cannot give a result."""
    if seeds < 2:
        raise UsageError(f"--seeds {seeds}: at least 2 seeds are needed to measure a spread")
    if steps < 1:
        raise UsageError(f"--steps {steps}: train at least 1 step")
    if jobs < 1:
        raise UsageError(f"--jobs {jobs}: run at least 1 job at a time")


def _seeds(base: int, group: str, seed: int) -> dict[str, Any]:
    if group == ALL:
        return {s: seed for s in VARIANCE_SOURCES}
    return {s: (seed if s == group else base) for s in VARIANCE_SOURCES}


def to_record(out: RunOutcome) -> RunRecord:
    rep = out.report
    message = rep.get("message", "")
    if out.lost:
        message = f"the run {out.lost}"
    elif not rep:
        message = (f"the process ended with status {out.exit_code} and no report; output: "
                   f"{out.output_tail[-600:]}")
    return RunRecord(group=out.spec.group, seed=out.spec.seed, status=out.status,
                     metrics=rep.get("metrics", {}), message=message, seconds=rep.get("seconds"),
                     where=rep.get("where"))


def run_in_fresh_processes(runs: list[Any], pool_opts: PoolOptions, on_done: Callable[..., Any],
                           stop: Callable[..., Any]) -> list[Any]:
    """The default runner: each run a fresh process, ``pool_opts.jobs`` at a time, on the
    executor ``pool_opts`` names."""
    folder = tempfile.mkdtemp(prefix="audit-variance-")
    executor = executors.make(pool_opts.executor, pool_opts.ray_address, pool_opts.cwd,
                              device=pool_opts.device)
    try:
        return Pool(pool_opts, folder, executor).run(runs, on_done, stop)
    finally:
        executor.close()
        shutil.rmtree(folder, ignore_errors=True)


#: ``runner(runs, pool_opts, on_done, stop) -> [RunOutcome]``; tests may run the worker
#: in-process.
Runner = Callable[[list[Any], PoolOptions, Callable[..., Any], Callable[..., Any]], list[Any]]


def execute(runs: list[Any], pool_opts: PoolOptions, progress: Reporter,
            runner: Optional[Runner] = None) -> list[Any]:
    """Run every spec. A target that cannot be loaded before any run has trained stops the
    pool and raises :class:`TargetError`; one that fails for some seeds only is a failed run."""
    done, ok = [0], [0]

    def on_done(out: RunOutcome) -> None:
        done[0] += 1
        ok[0] += out.status == Status.OK
        if progress:  # one bar for the runs (a run is many steps, made in another process)
            total = len(runs)
            progress(Progress(f"{total} runs", done[0], total, unit="run",
                              note=f"run {done[0]} of {total} ({out.spec.group} seed "
                                   f"{out.spec.seed}: {out.status})"))

    def stop(out: RunOutcome) -> bool:
        return out.status == Status.TARGET_ERROR and not ok[0]

    outs = (runner or run_in_fresh_processes)(runs, pool_opts, on_done, stop)
    failed = [o for o in outs if o.status == Status.TARGET_ERROR]
    if failed and (len(outs) < len(runs) or len(failed) == len(outs)):
        raise TargetError(failed[0].report.get("message", "the target could not be loaded"))
    return outs


def metric_names(records: list[RunRecord]) -> list[str]:
    names: list[str] = []
    for r in records:
        for name in r.metrics:
            if name not in names:
                names.append(name)
    return names


def finite_values(records: list[RunRecord], metric: str) -> tuple[Any, ...]:
    """(seeds, values) of the finished runs with a finite value of ``metric``, seed order."""
    pairs = sorted((r.seed, float(r.metrics[metric])) for r in records
                   if r.status == Status.OK and metric in r.metrics
                   and math.isfinite(float(r.metrics[metric])))
    return [p[0] for p in pairs], [p[1] for p in pairs]


def source_stats(records: list[RunRecord], metric: str, confidence: float, rng_seed: int) -> SourceStats:
    seeds, values = finite_values(records, metric)
    out = SourceStats(values=values, seeds=seeds, excluded=len(records) - len(values))
    if values:
        s = stats.describe(values, confidence, rng_seed)
        out.mean, out.std, out.min, out.max, out.q1, out.q3 = s.mean, s.std, s.min, s.max, s.q1, s.q3
        out.iqr, out.std_ci = s.iqr, list(s.std_ci)
    return out


def _metric_variance(records: list[RunRecord], metric: str, groups: list[Any], direction: str,
                     confidence: float) -> MetricVariance:
    mv = MetricVariance(direction=direction)
    for k, group in enumerate(groups):
        mv.sources[group] = source_stats([r for r in records if r.group == group], metric,
                                         confidence, rng_seed=k)
    total = mv.sources[ALL].std
    for st in mv.sources.values():
        if st.std is not None and total is not None:
            st.share = stats.share(st.std ** 2, total ** 2)
    return mv


def _control(records: list[RunRecord], base: int) -> tuple[Any, ...]:
    """(controlled, spread): do the runs with every seed at ``base`` agree on every metric?"""
    controls = [r for r in records if r.seed == base and r.status == Status.OK]
    spread = 0.0
    for name in metric_names(controls):
        values = [r.metrics[name] for r in controls if name in r.metrics]
        if len(values) > 1 and all(math.isfinite(v) for v in values):
            spread = max(spread, max(values) - min(values))
    if len(controls) < 2:
        return None, None
    return spread == 0.0, spread


def _routing(outs: list[Any], controlled: Optional[bool]) -> list[Any]:
    report: dict[str, Any] = next((o.report for o in outs if o.report.get("routing")), {})
    routes = [Routing(**r) for r in report.get("routing", [])]
    if controlled is False:
        for route in routes:
            route.separable = False
        routes.append(Routing(
            "unreached", "randomness no seed reaches", separable=False,
            note="runs with identical seeds gave different metrics: the target draws from a "
                 "generator the tool cannot reach (made without a seed, seeded from the clock "
                 "or the OS) or uses a nondeterministic kernel; run `audit determinism` to find it"))
    return routes


def environment_of(outs: list[Any]) -> tuple[Any, ...]:
    report: dict[str, Any] = next((o.report for o in outs if o.report.get("environment")), {})
    device = next((o.report["device"] for o in outs if o.report.get("device")), "cpu")
    return report.get("environment", {}), device


def audit_variance(opts: VarianceOptions, progress: Reporter = None,
                   runner: Optional[Runner] = None) -> VarianceResult:
    """Train ``seeds`` runs per source and ``seeds`` with all varied; the statistics."""
    validate_seeds(opts.seeds, opts.steps, opts.jobs)
    unknown = [s for s in opts.sources if s not in VARIANCE_SOURCES]
    if unknown or not opts.sources:
        raise UsageError(f"--sources {','.join(opts.sources)}: choose from "
                         f"{','.join(VARIANCE_SOURCES)}")
    started = time.monotonic()
    groups = [s for s in VARIANCE_SOURCES if s in opts.sources] + [ALL]
    runs = [RunSpec(g, opts.seed + i, _seeds(opts.seed, g, opts.seed + i), opts.target)
            for g in groups for i in range(opts.seeds)]
    pool = PoolOptions(opts.steps, opts.seed, opts.device, opts.input_shape, opts.num_classes,
                       opts.jobs, opts.cwd, opts.executor, opts.ray_address)
    outs = execute(runs, pool, progress, runner)
    records = [to_record(o) for o in outs]
    controlled, spread = _control(records, opts.seed)
    env, device = environment_of(outs)
    result = VarianceResult(seeds=opts.seeds, steps=opts.steps, seed=opts.seed,
                            target=label(opts.target), device=device,
                            sources=groups[:-1], routing=_routing(outs, controlled),
                            controlled=controlled, control_spread=spread, runs=records,
                            environment=env)
    for name in metric_names(records):
        direction = opts.directions.get(name) or guess_direction(name)
        mv = _metric_variance(records, name, groups, direction, result.confidence)
        result.metrics[name] = mv
        ranked = [(st.std, g) for g, st in mv.sources.items() if g != ALL and st.std is not None]
        if ranked:
            result.dominant[name] = max(ranked)[1]
    result.error = _all_failed(records) if not result.metrics else crash_error(records)
    result.seconds = round(time.monotonic() - started, 3)
    return result


#: Run statuses that mean the target crashed (a non-finite metric is a result, not a crash).
CRASHED = (Status.CRASHED, Status.KILLED, Status.TARGET_ERROR)


def crash_error(records: list[RunRecord]) -> Optional[str]:
    """The error of a result whose runs crashed (they are left out of the statistics)."""
    bad = [r for r in records if r.status in CRASHED]
    if not bad:
        return None
    first = bad[0]
    at = f" (at {first.where})" if first.where else ""
    return (f"{len(bad)} of {len(records)} runs crashed and were left out of the statistics; "
            f"first: {first.group} seed {first.seed}: {first.message}{at}")


def _all_failed(records: list[RunRecord]) -> str:
    first = next((r for r in records if r.status != Status.OK), None)
    detail = f": {first.status}, {first.message}" if first else ""
    return f"no run finished with a metric{detail}"
