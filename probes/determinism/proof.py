"""Proving a cause: a knob is a cure only when agreement under it beats chance.

Two runs that differ by chance can also agree by chance: a label map built from a ``set`` of a
few strings has few possible orders, so two fresh processes sometimes get the same one, and a
pair of runs that agrees under whichever knob was tried proves nothing. :class:`Chance`
estimates how often two plain runs (no knob) agree through the parting step, from every pair
of the runs already made. A knob is proven when ``k`` fresh pairs under it all agree and the
chance of that without it, ``rate ** k``, is at most :data:`ALPHA`.

One pair suffices when every plain pair differed and the difference is a computed one
(forward, backward, optimizer) on a device where the knob can act; repeated pairs are asked
for when plain runs sometimes agree, when the difference may have few outcomes (the initial
parameters, the data, the RNG state), and for knobs that cannot act on the device in use
(deterministic kernels and cuDNN on a CPU-only run).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

from audit.probes.determinism.attribute import trial
from audit.probes.results.records import Record

#: The chance of calling a knob a cure by luck that the audit accepts.
ALPHA = 0.01
#: At most this many pairs under one knob (enough for two equally likely outcomes).
MAX_PAIRS = 10
#: Knobs that act only on an accelerator.
DEVICE_KNOBS = ("deterministic_algorithms", "fill_uninitialized_memory", "cudnn_benchmark_off")
#: Stages whose difference may take few values, so two runs may agree by chance: the initial
#: parameters, the data and the RNG state (a label order from a few strings), and the optimizer
#: (an update summed in one of a few orders).
FEW_OUTCOMES = ("init", "data", "rng", "optimizer")
#: Record fields that say how a run trained through a step.
SIGNATURE_FIELDS = ("inputs", "targets", "fed", "loss_targets", "start", "rng", "outputs", "loss",
                    "grads", "params")


@dataclass
class Chance:
    """Pairs of plain runs and how many of them agreed through the parting step."""

    agreeing: int
    pairs: int
    few_outcomes: bool  # the difference may take few values: agreement by chance is possible

    @property
    def rate(self) -> float:
        """The chance two plain runs agree (Laplace's rule of succession over the pairs seen)."""
        return (self.agreeing + 1) / (self.pairs + 2)


@dataclass
class Proof:
    """One knob set's trial: whether it removed the divergence, and how sure that is."""

    removed: bool
    pairs: int  # pairs run under the knob set
    agreeing: int  # of them, pairs that agreed
    luck: Optional[float]  # chance of this agreement without the knob (None: not estimated)

    def detail(self) -> str:
        if not self.removed:
            if self.agreeing == self.pairs:
                return (f"{self.agreeing} of {self.pairs} pairs agreed, which plain runs also do "
                        "by chance: not proven")
            return f"{self.agreeing} of {self.pairs} pairs agreed under it"
        if self.luck is None:
            return f"{self.pairs} of {self.pairs} pairs agreed; every plain pair differed"
        return (f"{self.pairs} of {self.pairs} pairs agreed; chance of that without the knob "
                f"<= {self.luck:.2g} (sure to {100 * (1 - self.luck):.1f}%)")


def signature(records: list[dict[str, Any]], upto: int) -> tuple[Any, ...]:
    """What a run did through step ``upto``: two runs agree there when these are equal."""
    init = next((r.get("params") for r in records if r.get("type") == Record.INIT), None)
    steps = [r for r in records if r.get("type") == Record.STEP and r.get("step", 0) <= upto]
    rows = tuple(tuple(repr(r.get(k)) for k in SIGNATURE_FIELDS) for r in steps)
    return repr(init), rows


def chance_of(traces: list[Any], upto: int, stage: str) -> Chance:
    """:class:`Chance` from the plain runs' traces (runs that stopped before ``upto`` left out).
    One differing pair is not counted: the audit looked further only because a pair differed."""
    done = [t for t in traces if sum(r.get("type") == Record.STEP for r in t) > upto]
    sigs = [signature(t, upto) for t in done]
    pairs = agreeing = 0
    for i in range(len(sigs)):
        for j in range(i + 1, len(sigs)):
            pairs += 1
            agreeing += sigs[i] == sigs[j]
    if pairs > agreeing:
        pairs -= 1
    return Chance(agreeing, pairs, few_outcomes=stage in FEW_OUTCOMES)


def horizon(traces: list[Any], upto: int, stage: str) -> tuple[Any, ...]:
    """The step through which knob trials compare runs, and the :class:`Chance` there:
    ``upto`` (the parting step), unless plain runs agree there so often that
    :data:`MAX_PAIRS` pairs could not beat chance (a loader with three workers has about three
    first batches); then the last step every plain run made, where they agree less often, if
    they do. Later steps may part for other causes too, so the short horizon is kept when it can
    prove something."""
    chance = chance_of(traces, upto, stage)
    if chance.rate ** MAX_PAIRS <= ALPHA:
        return upto, chance
    last = min((sum(r.get("type") == Record.STEP for r in t) for t in traces), default=0) - 1
    if last <= upto:
        return upto, chance
    longer = chance_of(traces, last, stage)
    return (last, longer) if longer.rate < chance.rate else (upto, chance)


def pairs_needed(rate: float, alpha: float = ALPHA) -> int:
    """Pairs that must all agree for ``rate ** pairs <= alpha``."""
    if rate <= 0:
        return 1
    return max(1, math.ceil(math.log(alpha) / math.log(rate) - 1e-9))


def needs_repeats(knobs: list[str], chance: Chance, device: str) -> bool:
    off_device = not device.startswith("cuda") and any(k in DEVICE_KNOBS for k in knobs)
    return chance.agreeing > 0 or chance.few_outcomes or off_device


def prove(knobs: list[str], chance: Chance, device: str, run_pairs: Callable[[list[Any], int], list[Any]],
          alpha: float = ALPHA) -> Proof:
    """Run pairs under ``knobs`` (``run_pairs(knobs, count) -> [agreed, ...]``) until their
    agreement beats chance or one pair differs."""
    first = run_pairs(knobs, 1)
    if not all(first):
        return Proof(False, 1, 0, None)
    if not needs_repeats(knobs, chance, device):
        return Proof(True, 1, 1, None)
    needed = pairs_needed(chance.rate, alpha)
    more = run_pairs(knobs, min(needed, MAX_PAIRS) - 1) if needed > 1 else []
    pairs, agreeing = 1 + len(more), 1 + sum(more)
    luck = chance.rate ** pairs
    return Proof(agreeing == pairs and luck <= alpha, pairs, agreeing, luck)


def search(plan: list[Any], chance: Chance, device: str, run_pairs: Callable[[list[Any], int], list[Any]],
           steps: int) -> list[Any]:
    """:class:`KnobTrial` records: one knob at a time, most likely first, until one removes
    the divergence beyond chance (a knob that removes it alone leaves no room for another
    independent cause). If none does, all knobs together, then all-but-one, find the ones
    needed together."""
    trials = []
    for knob in plan:
        found = prove([knob], chance, device, run_pairs)
        trials.append(trial(knob, found.removed, steps, found.detail(), found.pairs, found.luck))
        if found.removed:
            return trials
    if len(plan) < 2 or not prove(plan, chance, device, run_pairs).removed:
        return trials
    out = []
    for knob in plan:
        rest = [k for k in plan if k != knob]
        necessary = not all(run_pairs(rest, 1))
        out.append(trial(knob, necessary, steps, "needed together with the other knobs" if necessary
                         else "not needed once the others are set"))
    return out
