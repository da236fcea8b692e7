"""The statistics of variance/compare on synthetic samples: error rates, power, properties."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.probes.variance import stats
from audit.probes.variance.compare import compare_samples

SIMS = 400


def _rate(rejections: int, sims: int, level: float) -> float:
    """Three binomial standard errors around ``level``."""
    return 3 * math.sqrt(level * (1 - level) / sims)


def test_false_positive_rate_at_or_below_nominal_over_simulated_nulls():
    rng = np.random.default_rng(20261201)
    alpha = 0.05
    hits = 0
    for i in range(SIMS):
        a = rng.normal(1.0, 0.2, size=10)
        b = a + rng.normal(0.0, 0.05, size=10)  # paired noise, no shift
        hits += stats.sign_flip_p(np.subtract(b, a), rng_seed=i) < alpha
    assert hits / SIMS <= alpha + _rate(hits, SIMS, alpha)


def test_false_positive_rate_with_skewed_null_deltas():
    """Symmetric but heavy-tailed paired differences: the sign-flip test stays exact."""
    rng = np.random.default_rng(7)
    hits = sum(stats.sign_flip_p(rng.standard_t(2, size=8)) < 0.05 for _ in range(SIMS))
    assert hits / SIMS <= 0.05 + _rate(hits, SIMS, 0.05)


def test_known_shift_detected_at_about_the_predicted_power():
    rng = np.random.default_rng(3)
    n, sd = 10, 1.0
    shift = 1.0  # standardized effect 1.0 on 10 pairs: about 80 %
    predicted = stats.power(n, shift / sd)
    assert 0.6 < predicted < 0.95
    hits = sum(stats.sign_flip_p(rng.normal(shift, sd, size=n), rng_seed=i) < 0.05
               for i in range(SIMS))
    # The permutation test is at most slightly less powerful than the t-test it is sized by.
    assert abs(hits / SIMS - predicted) <= _rate(hits, SIMS, predicted) + 0.05


def test_seeds_needed_reaches_80_percent_power():
    deltas = np.random.default_rng(1).normal(0.5, 1.0, size=10)
    n = stats.seeds_needed(deltas)
    effect = deltas.mean() / deltas.std(ddof=1)
    assert stats.power(n, effect) >= 0.8
    assert n == stats.min_seeds_for() or stats.power(n - 1, effect) < 0.8


def test_seeds_needed_edge_cases():
    assert stats.seeds_needed([0.0, 0.0, 0.0]) is None  # nothing to detect
    assert stats.seeds_needed([0.1, 0.1]) == stats.min_seeds_for(0.05) == 6
    assert stats.seeds_needed([1e-3, -1e-3, 1.01e-3, -0.99e-3]) is None  # beyond MAX_SEEDS


def test_compare_verdicts_follow_direction():
    a = [1.0, 1.1, 0.9, 1.05, 0.95, 1.02, 0.98, 1.01]
    lower_b = [x - 0.5 for x in a]
    assert compare_samples(a, lower_b, "lower").verdict == "better"
    assert compare_samples(a, lower_b, "higher").verdict == "worse"
    assert compare_samples(a, list(a), "lower").verdict == "no_difference"
    res = compare_samples(a, lower_b, "lower")
    assert res.prob_improvement == 1.0 and res.effect_size > 0 and res.p_value < 0.05


def test_describe_constant_sample_has_zero_spread():
    s = stats.describe([2.5] * 5)
    assert s.std == 0.0 and s.std_ci == (0.0, 0.0) and s.iqr == 0.0


finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False)


@settings(max_examples=40, deadline=None)
@given(st.lists(finite, min_size=2, max_size=12))
def test_ci_contains_the_sample_mean(values):
    lo, hi = stats.mean_ci(values)
    mean = float(np.mean(values))
    tol = 1e-9 * max(1.0, abs(mean))
    assert lo - tol <= mean <= hi + tol


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(finite, finite), min_size=2, max_size=10),
       st.sampled_from(["lower", "higher"]))
def test_deltas_antisymmetric_when_variants_swap(pairs, direction):
    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    ab, ba = compare_samples(a, b, direction), compare_samples(b, a, direction)
    assert ab.deltas == [-d for d in ba.deltas]
    assert ab.p_value == pytest.approx(ba.p_value)
    assert ab.prob_improvement == pytest.approx(1 - ba.prob_improvement)
    swapped = {"better": "worse", "worse": "better", "no_difference": "no_difference"}
    assert swapped[ab.verdict] == ba.verdict


@settings(max_examples=30, deadline=None)
@given(st.lists(finite, min_size=3, max_size=12))
def test_std_ci_brackets_nonnegative(values):
    s = stats.describe(values)
    if s.std_ci[0] is not None:
        assert 0.0 <= s.std_ci[0] <= s.std_ci[1]
