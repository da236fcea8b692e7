"""The statistics of ``audit variance`` and ``audit compare``, on plain samples (no torch).

* :func:`describe`: a sample's mean, std, range, IQR and a bootstrap CI of its std;
* :func:`mean_ci`: a BCa bootstrap CI of a mean (``scipy.stats.bootstrap``);
* :func:`sign_flip_p`: the paired sign-flip permutation test (``scipy.stats.permutation_test``),
  exact when ``2**n`` flips fit in the resampling budget;
* :func:`prob_improvement`: P(candidate beats baseline) over all pairs of seeds (rliable's
  probability of improvement; ties count one half);
* :func:`power` / :func:`seeds_needed`: the power of a two-sided paired test on ``n`` seeds
  (noncentral t) and the fewest seeds that reach 80 %.

Every function is deterministic for a given ``rng_seed``.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
from scipy import stats

#: Resamples for the bootstrap CIs and the (non-exact) permutation tests.
RESAMPLES = 9999
#: The most seeds :func:`seeds_needed` will recommend; beyond it the answer is ``None``.
MAX_SEEDS = 10000


@dataclass(frozen=True)
class Summary:
    """One sample's distribution."""

    n: int
    mean: float
    std: float  # sample std (ddof=1); 0.0 for one value
    min: float
    max: float
    q1: float
    q3: float
    std_ci: tuple[Optional[float], Optional[float]]  # (lo, hi) bootstrap CI of the std, or (None, None) under 3 values

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1


def _constant(values: np.ndarray) -> bool:
    return values.size == 0 or bool(np.all(values == values[0]))


def _bootstrap_ci(values: np.ndarray, statistic: Callable[..., Any], confidence: float,
                  rng_seed: int) -> tuple[Optional[float], Optional[float]]:
    """BCa CI of ``statistic``; percentile when BCa is undefined (NaN) for this sample."""
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns on degenerate resamples
            res = stats.bootstrap((values,), statistic, confidence_level=confidence,
                                  n_resamples=RESAMPLES, method=method, vectorized=True,
                                  rng=np.random.default_rng(rng_seed))
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(lo) and math.isfinite(hi):
            return lo, hi
    return None, None


def _std(sample: Any, axis: int = -1) -> Any:
    return np.std(sample, axis=axis, ddof=1)


def describe(values: Sequence[float], confidence: float = 0.95, rng_seed: int = 0) -> Summary:
    """Mean, std, range, quartiles and a bootstrap CI of the std of ``values`` (non-empty)."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        raise ValueError("describe() needs at least one value")
    std = float(np.std(arr, ddof=1)) if arr.size > 1 else 0.0
    ci: tuple[Optional[float], Optional[float]]
    if _constant(arr):
        ci = (0.0, 0.0)
    elif arr.size < 3:
        ci = (None, None)
    else:
        ci = _bootstrap_ci(arr, _std, confidence, rng_seed)
    q1, q3 = np.percentile(arr, [25, 75])
    return Summary(n=int(arr.size), mean=float(arr.mean()), std=std, min=float(arr.min()),
                   max=float(arr.max()), q1=float(q1), q3=float(q3), std_ci=ci)


def mean_ci(values: Sequence[float], confidence: float = 0.95,
            rng_seed: int = 0) -> tuple[Optional[float], Optional[float]]:
    """BCa bootstrap CI of the mean; ``(x, x)`` for a constant sample, ``(None, None)`` under 2."""
    arr = np.asarray(values, dtype=float)
    if arr.size and _constant(arr):
        return float(arr[0]), float(arr[0])
    if arr.size < 2:
        return None, None
    return _bootstrap_ci(arr, lambda s, axis=-1: np.mean(s, axis=axis), confidence, rng_seed)


def sign_flip_p(deltas: Sequence[float], rng_seed: int = 0) -> float:
    """Two-sided p-value of the paired sign-flip permutation test of mean(deltas) = 0.

    Under the null each paired difference is as likely positive as negative, so flipping the
    signs gives the null distribution of the mean; with ``n`` pairs there are ``2**n`` flips,
    all enumerated when that is at most :data:`RESAMPLES` (the test is then exact).
    """
    arr = np.asarray(deltas, dtype=float)
    if arr.size == 0 or np.all(arr == 0):
        return 1.0
    res = stats.permutation_test((arr,), lambda s, axis=-1: np.mean(s, axis=axis),
                                 permutation_type="samples", alternative="two-sided",
                                 n_resamples=RESAMPLES, vectorized=True,
                                 rng=np.random.default_rng(rng_seed))
    return float(min(1.0, res.pvalue))


def prob_improvement(baseline: Sequence[float], candidate: Sequence[float],
                     direction: str = "lower") -> float:
    """P(a candidate seed beats a baseline seed), over all pairs; ties count one half."""
    a = np.asarray(baseline, dtype=float)[:, None]
    b = np.asarray(candidate, dtype=float)[None, :]
    wins = (b < a) if direction == "lower" else (b > a)
    return float((wins.sum() + 0.5 * (a == b).sum()) / (a.size * b.size))


def power(n: int, effect: float, alpha: float = 0.05) -> float:
    """Power of a two-sided paired t-test on ``n`` pairs at standardized effect ``effect``
    (mean difference / std of the differences)."""
    if n < 2:
        return 0.0
    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = abs(effect) * math.sqrt(n)
    return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))


def min_seeds_for(alpha: float = 0.05) -> int:
    """The fewest pairs with which the exact sign-flip test can reach ``alpha`` at all
    (its smallest two-sided p-value is ``2 / 2**n``)."""
    n = 1
    while 2.0 / 2 ** n > alpha:
        n += 1
    return n


def seeds_needed(deltas: Sequence[float], alpha: float = 0.05, target: float = 0.8) -> Optional[int]:
    """Seeds needed to detect the observed mean difference with ``target`` power, or ``None``
    when there is no difference to detect or it would need more than :data:`MAX_SEEDS`."""
    arr = np.asarray(deltas, dtype=float)
    if arr.size == 0:
        return None
    mean = float(arr.mean())
    sd = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    floor = min_seeds_for(alpha)
    if mean == 0.0:
        return None
    if sd == 0.0:
        return floor
    effect = mean / sd
    lo, hi = 2, 4
    while power(hi, effect, alpha) < target:
        lo, hi = hi, hi * 2
        if hi > MAX_SEEDS * 2:
            return None
    while lo < hi:  # power grows with n: the smallest n that reaches the target
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if power(mid, effect, alpha) < target else (lo, mid)
    n = max(lo, floor)
    return n if n <= MAX_SEEDS else None


def share(part_var: float, total_var: float) -> Optional[float]:
    """A source's share of the all-sources variance (may exceed 1 by sampling noise)."""
    if total_var <= 0.0:
        return None if part_var > 0.0 else 0.0
    return part_var / total_var
