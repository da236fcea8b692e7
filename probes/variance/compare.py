"""``audit compare``: is the candidate better than the baseline by more than seed noise?

Both variants train on the same seeds (every source varied together), paired by seed. On the
paired differences ``b - a``: a BCa bootstrap CI of the mean, the sign-flip permutation test,
the probability of improvement, the effect in seed-std units, and the seeds that 80 % power
would need. The verdict follows the test: ``better`` / ``worse`` when ``p < alpha``, else
``no_difference``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from audit.probes.errors import UsageError
from audit.probes.run.target import label
from audit.probes.results.variance import DIRECTIONS, VARIANCE_SOURCES, CompareResult, Variant
from audit.probes.variance import stats
from audit.probes.progress import Reporter
from audit.probes.variance.engine import (Runner, crash_error, environment_of, execute,
                                          finite_values, guess_direction, metric_names,
                                          to_record, validate_seeds)
from audit.probes.variance.runner import PoolOptions, RunSpec


@dataclass
class CompareOptions:
    baseline: Optional[str]
    candidate: Optional[str]
    seeds: int = 8
    steps: int = 50
    seed: int = 0
    metric: Optional[str] = None  # default: the first metric evaluate() gives, else "loss"
    direction: Optional[str] = None  # default: guess_direction(metric)
    alpha: float = 0.05
    jobs: int = 1
    device: str = "auto"
    input_shape: Optional[list[Any]] = None
    num_classes: Optional[int] = None
    cwd: Optional[str] = None
    executor: str = "local"  # where the runs execute: local or ray
    ray_address: Optional[str] = None


def compare_samples(a: list[Any], b: list[Any], direction: str = "lower", alpha: float = 0.05,
                    confidence: float = 0.95) -> CompareResult:
    """The statistics of paired samples ``a`` (baseline) and ``b`` (candidate), same length."""
    if len(a) != len(b):
        raise ValueError("paired samples must have the same length")
    deltas = [float(y) - float(x) for x, y in zip(a, b)]
    sign = -1.0 if direction == "lower" else 1.0
    mean = float(np.mean(deltas)) if deltas else None
    p = stats.sign_flip_p(deltas) if deltas else None
    verdict = "no_difference"
    if p is not None and p < alpha and mean:
        verdict = "better" if sign * mean > 0 else "worse"
    sd_a = float(np.std(a, ddof=1)) if len(a) > 1 else 0.0
    sd_b = float(np.std(b, ddof=1)) if len(b) > 1 else 0.0
    pooled = math.sqrt((sd_a ** 2 + sd_b ** 2) / 2)
    sd_d = float(np.std(deltas, ddof=1)) if len(deltas) > 1 else 0.0
    return CompareResult(
        seeds=len(deltas), metric="", direction=direction, verdict=verdict,
        a=Variant(values=list(map(float, a)), mean=_mean(a), std=sd_a),
        b=Variant(values=list(map(float, b)), mean=_mean(b), std=sd_b),
        deltas=deltas, ci=list(stats.mean_ci(deltas, confidence)), p_value=p,
        prob_improvement=stats.prob_improvement(a, b, direction) if deltas else None,
        seeds_needed=stats.seeds_needed(deltas, alpha), mean_delta=mean,
        effect_size=(sign * mean / pooled) if pooled > 0 and mean is not None else None,
        alpha=alpha, confidence=confidence, min_seeds=stats.min_seeds_for(alpha),
        power=stats.power(len(deltas), mean / sd_d, alpha) if sd_d > 0 and mean is not None else None)


def _mean(values: list[Any]) -> Optional[float]:
    return float(np.mean(values)) if len(values) else None


def _check(opts: CompareOptions) -> None:
    validate_seeds(opts.seeds, opts.steps, opts.jobs)
    if opts.direction is not None and opts.direction not in DIRECTIONS:
        raise UsageError(f"--direction {opts.direction}: choose lower or higher")
    if not 0 < opts.alpha < 1:
        raise UsageError(f"alpha {opts.alpha}: choose a level between 0 and 1, e.g. 0.05")


def _diverged(a_seeds: list[Any], b_seeds: list[Any]) -> Optional[str]:
    """A verdict when one side never gave a finite value and the other did."""
    if not b_seeds and a_seeds:
        return "worse"
    if not a_seeds and b_seeds:
        return "better"
    return None


def audit_compare(opts: CompareOptions, progress: Reporter = None,
                  runner: Optional[Runner] = None) -> CompareResult:
    """Train both variants on the same seeds and compare them."""
    _check(opts)
    started = time.monotonic()
    runs = [RunSpec(side, opts.seed + i, {s: opts.seed + i for s in VARIANCE_SOURCES}, target)
            for i in range(opts.seeds)
            for side, target in (("a", opts.baseline), ("b", opts.candidate))]
    pool = PoolOptions(opts.steps, opts.seed, opts.device, opts.input_shape, opts.num_classes,
                       opts.jobs, opts.cwd, opts.executor, opts.ray_address)
    outs = execute(runs, pool, progress, runner)
    records = [to_record(o) for o in outs]
    names = metric_names(records)
    metric = opts.metric or next((n for n in names if n != "loss"), "loss")
    if names and metric not in names:
        raise UsageError(f"--metric {metric}: the runs report {', '.join(names)}; pick one")
    direction = opts.direction or guess_direction(metric)
    a_seeds, a_vals = finite_values([r for r in records if r.group == "a"], metric)
    b_seeds, b_vals = finite_values([r for r in records if r.group == "b"], metric)
    paired = sorted(set(a_seeds) & set(b_seeds))
    a_by, b_by = dict(zip(a_seeds, a_vals)), dict(zip(b_seeds, b_vals))
    result = compare_samples([a_by[s] for s in paired], [b_by[s] for s in paired], direction,
                             opts.alpha)
    result.seeds, result.metric, result.paired_seeds, result.metrics = opts.seeds, metric, paired, names
    result.steps, result.seed, result.runs = opts.steps, opts.seed, records
    result.a.target = label(opts.baseline)
    result.b.target = label(opts.candidate)
    result.environment, result.device = environment_of(outs)
    problems = [crash_error(records)]
    if len(paired) < 2:
        forced = _diverged(a_seeds, b_seeds)
        if forced:
            result.verdict = forced
        else:
            problems.append(f"only {len(paired)} seed(s) finished with a finite {metric} on "
                            "both sides; at least 2 are needed")
    result.error = "; ".join(p for p in problems if p) or None
    result.seconds = round(time.monotonic() - started, 3)
    return result
