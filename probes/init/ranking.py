"""Which scheme to recommend: health first, then seed noise, then depth propagation.

1. Findings decide whenever any scheme has them (:func:`probes.init.diagnose.scheme_score`).
2. The model's own init healthy: a healthy scheme whose early loss (the loss after the steps)
   on the audit's run (init seed 0) is lower than the model's own is compared with it on
   fresh init seeds (:func:`settle`; at most :data:`CANDIDATES` of them, chosen by the rule of
   3, not by their losses, so that one seed's noise does not choose which are compared),
   paired by seed: the mean difference (candidate minus own) and
   its Student-t interval at :data:`LEVEL`. Seed 0 chose the candidates, so it is left out (it
   would favour them). Seeds are added a round at a time (first :data:`FIRST_SEEDS`, then one
   more, at most :data:`MAX_SEEDS`) for the candidates whose call is still open. A candidate
   *beats* the model's own init when the whole interval is below zero and the mean difference
   is at least ``loss_tolerance`` (relative to the own init's median loss) in size; it is
   dropped once the interval at :data:`FUTILITY_LEVEL` lies above minus that margin. With no
   winner the model's own init is kept, and the others are within noise; with several, the
   choice among them is the rule of 3, so every audit names the same one. A t interval, not the bootstrap of ``audit
   compare``: with 3 to 8 pairs a bootstrap interval is too narrow, and a sign-flip test
   cannot reach 1 % below 7 pairs. The 99 % level keeps a false change rare although the
   interval is looked at after every round (six looks at most).
3. Among healthy schemes that tie (the model's own init unhealthy, where no extra seeds are
   spent, or several candidates that beat the model's own init): the one whose activations and
   gradients keep their scale through depth (:attr:`audit.probes.results.DepthTrend.fold` within
   :data:`PROPAGATION_SLACK` of the best), then a fixed order (:data:`PREFERENCE`), so the
   answer does not follow one seed's loss.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeGuard

import numpy as np
from scipy import stats

from audit.probes.init.thresholds import resolve_thresholds
from audit.probes.results import BUILTIN_SCHEMES, Recommendation, SchemeResult

#: Confidence level of the paired interval a change needs.
LEVEL = 0.99
#: Init seeds of the first round of a comparison, after the audit's own run (seed 0).
FIRST_SEEDS = 3
#: The most init seeds a comparison runs after seed 0.
MAX_SEEDS = 8
#: A candidate is dropped from the comparison once the interval at this level shows it is
#: not better by ``loss_tolerance`` (a missed change costs less than a false one).
FUTILITY_LEVEL = 0.8
#: The most candidates compared with the model's own init over seeds.
CANDIDATES = 3
#: Schemes whose depth fold is within this factor of the best one's propagate equally well: the
#: fitted folds of one scheme vary several-fold from seed to seed in narrow nets (Kaiming on a
#: 20-layer, 16-channel ReLU CNN: 1.4x to 16x), while Xavier there is 600x and more.
PROPAGATION_SLACK = 10.0
#: Among equals, the order of preference: the simplest, most widely used scheme first.
PREFERENCE = tuple(name for name in BUILTIN_SCHEMES if name != "default")

#: ``(scheme, init seed) -> the loss curve of that run``.
RunSeed = Callable[[str, int], list[float]]


@dataclass(frozen=True)
class Paired:
    """Candidate minus own, early loss, paired by init seed."""

    delta: float
    low: float
    high: float
    seeds: int


def early_loss(curve: list[float]) -> float:
    """The loss after the steps (``nan`` when there is none or it is not finite)."""
    last = curve[-1] if curve else None
    return float(last) if last is not None and math.isfinite(last) else math.nan


def seed_losses(scheme: SchemeResult) -> list[float]:
    """The early loss of every init seed the scheme ran."""
    return [early_loss(curve) for curve in (scheme.loss_seeds or [scheme.loss])]


def typical_loss(scheme: SchemeResult) -> float:
    """The median early loss over the scheme's seeds (``nan`` if any did not finish)."""
    losses = seed_losses(scheme)
    return math.nan if any(math.isnan(x) for x in losses) else statistics.median(losses)


def compared_losses(scheme: SchemeResult) -> list[float]:
    """The early losses a comparison pairs: those of the seeds after the first (the first
    seed's loss chose the candidates, so it would favour them)."""
    return seed_losses(scheme)[1:]


def paired(candidate: list[float], own: list[float], level: float = LEVEL) -> Optional[Paired]:
    """The mean paired difference and its t interval; ``None`` below two finite pairs."""
    diffs = np.array([c - o for c, o in zip(candidate, own)
                      if math.isfinite(c) and math.isfinite(o)], dtype=float)
    if diffs.size < 2:
        return None
    mean = float(diffs.mean())
    half = float(stats.t.ppf(0.5 + level / 2, diffs.size - 1) * diffs.std(ddof=1)
                 / math.sqrt(diffs.size))
    return Paired(mean, mean - half, mean + half, int(diffs.size))


def _margin(own: SchemeResult, limits: dict[str, Any]) -> float:
    return limits["loss_tolerance"] * abs(typical_loss(own))


def _beats(candidate: SchemeResult, own: SchemeResult, margin: float) -> bool:
    """The candidate finished every seed and beats the own init (see the module's doc)."""
    p = paired(compared_losses(candidate), compared_losses(own))
    return (p is not None and p.high < 0 and p.delta <= -margin
            and not math.isnan(typical_loss(candidate)))


def _cannot_beat(candidate: SchemeResult, own: SchemeResult, margin: float) -> bool:
    """Fairly sure (:data:`FUTILITY_LEVEL`) the candidate is not better by the margin, or it
    did not finish every seed."""
    p = paired(compared_losses(candidate), compared_losses(own), FUTILITY_LEVEL)
    return math.isnan(typical_loss(candidate)) or (p is not None and p.low > -margin)


def _healthy(scheme: Optional[SchemeResult]) -> TypeGuard[SchemeResult]:
    return scheme is not None and scheme.error is None and not scheme.findings


def noise_candidates(schemes: list[SchemeResult]) -> list[SchemeResult]:
    """The healthy schemes to compare with a healthy own init over seeds: of those whose first
    seed's early loss is below the own init's, the first :data:`CANDIDATES` by propagation
    (depth fold within :data:`PROPAGATION_SLACK` of the best) and then :data:`PREFERENCE`."""
    own = next((s for s in schemes if s.name == "default"), None)
    if own is None or not _healthy(own) or math.isnan(early_loss(own.loss)):
        return []
    lower = [s for s in schemes if s is not own and _healthy(s)
             and early_loss(s.loss) < early_loss(own.loss)]
    if not lower:
        return []
    least = min(_fold(s) for s in lower)
    ranked = sorted(lower, key=lambda s: (_fold(s) > PROPAGATION_SLACK * least, _order(s)))
    return ranked[:CANDIDATES]


def settle(schemes: list[SchemeResult], run_seed: RunSeed,
           thresholds: Optional[dict[str, Any]] = None) -> int:
    """Run the model's own init and the :func:`noise_candidates` on more init seeds while a
    candidate's call is open (see the module's doc), filling their ``loss_seeds``; the most
    seeds run (1 when no comparison was needed). A decided candidate runs no more seeds; its
    comparison pairs the seeds it ran with the own init's same seeds."""
    limits = resolve_thresholds(thresholds)
    candidates = noise_candidates(schemes)
    if not candidates:
        return 1
    own = next(s for s in schemes if s.name == "default")
    for scheme in (own, *candidates):
        scheme.loss_seeds = [list(scheme.loss)]
    seeds, active = 0, list(candidates)
    while seeds < MAX_SEEDS and active:
        target = FIRST_SEEDS if seeds == 0 else seeds + 1
        for seed in range(seeds + 1, target + 1):
            for scheme in (own, *active):
                assert scheme.loss_seeds is not None  # set above for own and every candidate
                scheme.loss_seeds.append(list(run_seed(scheme.name, seed)))
        seeds = target
        margin = _margin(own, limits)
        active = [c for c in active  # decided either way: no more runs
                  if not _beats(c, own, margin) and not _cannot_beat(c, own, margin)]
        winners = [c for c in candidates if _beats(c, own, margin)]
        if winners:  # only a scheme preferred to the choice so far could still change it
            choice = prefer(winners, limits)
            active = [c for c in active if _order(c) < _order(choice)]
    return seeds


def _order(scheme: SchemeResult) -> tuple[Any, ...]:
    known = scheme.name in PREFERENCE
    return (0 if known else 1, PREFERENCE.index(scheme.name) if known else 0, scheme.name)


def _fold(scheme: SchemeResult) -> float:
    return scheme.depth_trend.fold if scheme.depth_trend is not None else 1.0


def prefer(schemes: list[SchemeResult], thresholds: Optional[dict[str, Any]] = None) -> SchemeResult:
    """Among ``schemes`` (healthy, tied on loss): those whose depth fold is within
    :data:`PROPAGATION_SLACK` of the best, first by :data:`PREFERENCE`, unless another of them
    has an early loss clearly lower (:func:`clearly_lower`)."""
    limits = resolve_thresholds(thresholds)
    least = min(_fold(s) for s in schemes)
    good = sorted((s for s in schemes if _fold(s) <= PROPAGATION_SLACK * least), key=_order)
    pick = good[0]
    lowest = min(good, key=lambda s: _loss_key(typical_loss(s)))
    if math.isnan(typical_loss(pick)):
        return lowest
    return lowest if lowest is not pick and clearly_lower(lowest, pick, limits) else pick


def clearly_lower(a: SchemeResult, b: SchemeResult, limits: dict[str, Any]) -> bool:
    """``a``'s early loss is lower than ``b``'s by more than ``loss_tolerance``: where both ran
    several init seeds, the whole paired interval lies beyond that margin (so a gap smaller
    than the margin never decides, whatever one audit's noise); else on the one seed they ran
    (the own init unhealthy: no seeds are spent there)."""
    margin = limits["loss_tolerance"] * abs(typical_loss(b))
    if a.loss_seeds and b.loss_seeds:
        p = paired(compared_losses(a), compared_losses(b))
        return p is not None and p.high < -margin
    return typical_loss(a) < typical_loss(b) - margin


def _loss_key(value: float) -> float:
    return math.inf if math.isnan(value) else value


def _ci_text(p: Paired) -> str:
    return (f"{p.delta:+.3g} ({LEVEL:.0%} CI {p.low:+.3g} to {p.high:+.3g}, {p.seeds} init "
            "seeds paired by seed)")


def recommend(schemes: list[SchemeResult], thresholds: Optional[dict[str, Any]] = None) -> Recommendation:
    """The scheme to use and why (see the module's doc); ``scheme`` is ``None`` when every
    scheme raised."""
    limits = resolve_thresholds(thresholds)
    ran = [s for s in schemes if s.error is None]
    if not ran:
        return Recommendation(None, "Every scheme raised an error; see each scheme's error.")
    own = next((s for s in schemes if s.name == "default"), None)
    healthy = [s for s in ran if _healthy(s)]
    if _healthy(own):
        return _keep_or_beat(own, [s for s in healthy if s is not own], limits)
    if healthy:
        return _fix(own, healthy, limits)
    best = min(ran, key=lambda s: s.score if s.score is not None else math.inf)
    kinds = ", ".join(sorted({f.kind for f in best.findings}))
    return Recommendation(best.name, f"No scheme is free of findings; {best.name} has the least "
                                     f"severe ({kinds}) and the lowest loss among those.",
                          kept_own=best is own)


def _keep_or_beat(own: SchemeResult, others: list[SchemeResult],
                  limits: dict[str, Any]) -> Recommendation:
    steps, mine = len(own.loss), compared_losses(own)
    margin = _margin(own, limits)
    compared = {s.name: p for s in others if s.loss_seeds
                and (p := paired(compared_losses(s), mine)) is not None}
    winners = [s for s in others if s.name in compared and _beats(s, own, margin)]
    if winners:
        return _beaten(own, winners, compared, limits)
    if not compared:
        lower = [s for s in others if early_loss(s.loss) < early_loss(own.loss)]
        why = (f"The model's own init is healthy and has the lowest loss after {steps} steps "
               f"({early_loss(own.loss):.4g}).")
        if lower:
            best = min(lower, key=lambda s: early_loss(s.loss))
            why = (f"The model's own init is healthy; {best.name}'s loss after {steps} steps is "
                   f"lower on one init seed ({early_loss(best.loss):.4g} vs "
                   f"{early_loss(own.loss):.4g}), which does not show it is better beyond "
                   "seed noise.")
        return Recommendation("default", why, kept_own=True)
    name = min(compared, key=lambda n: compared[n].delta)
    p = compared[name]
    why = (f"The model's own init is healthy and no scheme beats it beyond seed noise: "
           f"{name} minus default, loss after {steps} steps, is {_ci_text(p)}")
    if p.high < 0:
        why += (f", lower by less than the {limits['loss_tolerance']:.0%} of the loss "
                "that is worth a change")
    why += "; the other healthy schemes are within noise of it or worse."
    return Recommendation("default", why, kept_own=True, against=name, seeds=p.seeds,
                          delta=p.delta, ci=[p.low, p.high], level=LEVEL)


def _beaten(own: SchemeResult, winners: list[SchemeResult], compared: dict[str, Any],
            limits: dict[str, Any]) -> Recommendation:
    top = min(winners, key=lambda s: compared[s.name].delta)
    choice = prefer(winners, limits)
    p = compared[choice.name]
    why = (f"{choice.name} beats the model's own init beyond seed noise and has no findings: "
           f"{choice.name} minus default, loss after {len(own.loss)} steps, is {_ci_text(p)}.")
    if choice is not top:
        why += (f" {top.name} beats it too, by less than the {limits['loss_tolerance']:.0%} of "
                f"the loss that would decide between them; {choice.name} keeps the signals' "
                f"scale through depth as well ({_fold(choice):.3g}x vs {_fold(top):.3g}x) and "
                "comes first in the order of preference.")
    return Recommendation(choice.name, why, kept_own=False, against=choice.name,
                          seeds=p.seeds, delta=p.delta, ci=[p.low, p.high], level=LEVEL)


def _fix(own: Optional[SchemeResult], healthy: list[SchemeResult],
         limits: dict[str, Any]) -> Recommendation:
    choice = prefer(healthy, limits)
    steps = len(choice.loss)
    why = (f"No findings, and it keeps the activations and gradients within "
           f"{_fold(choice):.3g}x of their scale from the first weight layer to the last")
    if len(healthy) > 1:
        worst = max(healthy, key=_fold)
        why += (f" (healthy schemes: {min(_fold(s) for s in healthy):.3g}x to "
                f"{_fold(worst):.3g}x, {worst.name} the most)")
    why += f"; loss after {steps} steps {early_loss(choice.loss):.4g}"
    if own is not None and own.error is None:
        why += (f" vs default {early_loss(own.loss):.4g}; default has "
                + ", ".join(sorted({f.kind for f in own.findings})))
    return Recommendation(choice.name, why + ".")
