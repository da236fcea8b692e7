"""Causes proven, not guessed: a knob is a cure only when agreement under it beats chance.

The attribution logic (:func:`probes.determinism.proof.search`, the plan, the causes) runs
here on simulated runs: a set-order script whose runs get one of a few label orders, the one
fixed by the string-hash seed when ``PYTHONHASHSEED`` is set, whatever other knob is on. A
real audit of such a script is in ``tests/test_script_patterns.py``; repeating it hundreds of
times is what the simulation is for.
"""
from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from audit.probes.determinism import attribute, latent, proof
from audit.probes.run.compare import Parting
from audit.probes.results import DeterminismResult, RngEscape


class SetOrderRuns:
    """Runs of a script whose labels follow a ``set`` of strings: each fresh process gets one
    of ``orders`` outcomes; under ``pythonhashseed`` every process gets the same one."""

    def __init__(self, orders: int, rng: random.Random):
        self.orders, self.rng = orders, rng
        self.pairs_run = 0

    def outcome(self, knobs: list) -> int:
        return 0 if "pythonhashseed" in knobs else self.rng.randrange(self.orders)

    def run_pairs(self, knobs: list, count: int) -> list:
        self.pairs_run += count
        return [self.outcome(knobs) == self.outcome(knobs) for _ in range(count)]

    def chance(self, runs: int, stage: str) -> proof.Chance:
        """What the plain runs (the audit's two runs, which differed, and its replay) showed,
        as :func:`proof.chance_of` counts it (the differing first pair left out)."""
        first = self.outcome([])
        second = first
        while second == first:
            second = self.outcome([])
        outcomes = [first, second] + [self.outcome([]) for _ in range(runs - 2)]
        pairs = [(i, j) for i in range(runs) for j in range(i + 1, runs) if (i, j) != (0, 1)]
        return proof.Chance(sum(outcomes[i] == outcomes[j] for i, j in pairs), len(pairs),
                            few_outcomes=stage in ("init", "data", "rng"))


def attribute_once(runs: SetOrderRuns, parting: Parting, plan: list) -> str:
    chance = runs.chance(4, parting.stage)
    trials = proof.search(plan, chance, "cpu", runs.run_pairs, (parting.step or 0) + 1)
    causes = attribute.causes(parting, trials, [], {}, None, None)
    return causes[0].source if causes[0].confirmed else "unknown"


def test_the_set_order_script_is_hash_seed_on_every_audit():
    """The labels part the runs at step 0 (data, targets), on a CPU model: the plan tries the
    hash seed first and proves it, on each of 200 audits, with two to six label orders."""
    parting = Parting(0, "data", "targets", data="content", field="loss_targets")
    plan = attribute.plan(parting, "cpu", [], {}, {"PYTHONHASHSEED": None, "flags": {"num_threads": 1}})
    assert plan[0] == "pythonhashseed" and "deterministic_algorithms" in plan
    rng = random.Random(17)
    sources = [attribute_once(SetOrderRuns(rng.choice([2, 3, 6, 24]), rng), parting, plan)
               for _ in range(200)]
    assert sources == ["hash_seed"] * 200


def test_a_lucky_knob_tried_first_is_not_a_cure():
    """The issue's failure: the labels parted the runs in the forward pass and the atomics knob
    was tried first; with a handful of strings one agreeing pair under it 'proved' it. With the
    proof, a wrong knob first still leaves the hash seed named on nearly every audit, while one
    pair per knob names the wrong one about as often as two runs agree by chance."""
    parting = Parting(0, "forward", None)
    plan = ["deterministic_algorithms", "pythonhashseed"]
    rng = random.Random(3)
    wrong = sum(attribute_once(SetOrderRuns(3, rng), parting, plan) != "hash_seed" for _ in range(400))
    assert wrong <= 400 * 0.02

    def one_pair_each(runs):
        for knob in plan:
            if all(runs.run_pairs([knob], 1)):
                return knob
    naive = sum(one_pair_each(SetOrderRuns(3, rng)) != "pythonhashseed" for _ in range(400))
    assert naive > 400 * 0.2  # what the old logic did: about one audit in three


def test_a_knob_that_cannot_act_on_the_cpu_needs_repeated_pairs():
    chance = proof.Chance(0, 1, few_outcomes=False)
    calls = []

    def always_agree(knobs, count):
        calls.append(count)
        return [True] * count

    found = proof.prove(["deterministic_algorithms"], chance, "cpu", always_agree)
    assert found.removed and found.pairs > 1 and found.luck <= proof.ALPHA
    assert "sure to" in found.detail()
    calls.clear()
    found = proof.prove(["deterministic_algorithms"], chance, "cuda:0", always_agree)
    assert (found.removed, found.pairs, calls) == (True, 1, [1])  # every plain pair differed


def test_one_differing_pair_under_the_knob_disproves_it():
    chance = proof.Chance(0, 6, few_outcomes=True)
    answers = iter([[True], [True, False]])
    found = proof.prove(["pythonhashseed"], chance, "cpu", lambda knobs, count: next(answers))
    assert not found.removed and (found.pairs, found.agreeing) == (3, 2)


@given(st.floats(min_value=1e-6, max_value=0.999))
def test_pairs_needed_is_the_fewest_that_beat_alpha(rate):
    n = proof.pairs_needed(rate)
    assert rate ** n <= proof.ALPHA * (1 + 1e-9)
    assert n == 1 or rate ** (n - 1) > proof.ALPHA


@given(st.integers(0, 20), st.integers(0, 20))
def test_chance_rate_grows_with_agreeing_pairs(agreeing, extra):
    pairs = agreeing + extra
    low, high = proof.Chance(0, pairs, True).rate, proof.Chance(agreeing, pairs, True).rate
    assert 0 < low <= high < 1


def test_signatures_tell_runs_apart_through_the_parting_step_only():
    def trace(*targets):
        return [{"type": "init", "params": ["a"]}] + [
            {"type": "step", "step": i, "targets": t, "loss": "l"} for i, t in enumerate(targets)]

    same, later = trace("x", "y"), trace("x", "z")
    assert proof.signature(same, 0) == proof.signature(later, 0)
    assert proof.signature(same, 1) != proof.signature(later, 1)
    chance = proof.chance_of([same, later, trace("x", "y")], 1, "data")
    assert (chance.agreeing, chance.pairs, chance.few_outcomes) == (1, 2, True)


# ------------------------------------------------------------------------------ latent sources


def test_latent_sources_have_place_and_fix_and_warn_or_fail_the_check():
    observed = {"loaders": [{"where": "train.py:9", "num_workers": 3, "in_order": False},
                            {"where": "train.py:12", "num_workers": 2, "in_order": True}],
                "cudnn_benchmark": "train.py:3"}
    escapes = [RngEscape("numpy.random.default_rng()", "train.py:20", 1, "seeded from the operating system")]
    assert latent.can_act(observed)
    found = latent.sources(observed, escapes, "cpu", jittered=True)
    assert [(s.source, s.where) for s in found] == [("dataloader", "train.py:9"),
                                                    ("unseeded_rng", "train.py:20")]
    assert "in_order=True" in found[0].fix and "varied worker timing" in found[0].tried
    assert "default_rng(seed)" in found[1].fix
    on_gpu = latent.sources(observed, [], "cuda:0", jittered=False)
    assert [s.source for s in on_gpu] == ["dataloader", "cudnn_benchmark"]

    result = DeterminismResult("deterministic", 2, 4, 0, "cpu", latent_sources=found)
    check = latent.check(result)  # warns by default
    assert (check.name, check.passed, check.where) == ("no latent sources", True, "train.py:9")
    assert check.message.startswith("warning:")
    result.latent_level = "fail"
    assert not latent.check(result).passed
    assert latent.check(DeterminismResult("deterministic", 2, 4, 0, "cpu")).passed
    again = DeterminismResult.from_dict(result.to_dict())
    assert again.latent_sources == found


def test_signatures_see_outputs_the_loss_rounds_alike():
    def trace(outputs):
        return [{"type": "init", "params": ["a"]},
                {"type": "step", "step": 0, "outputs": outputs, "loss": "l"}]

    assert proof.signature(trace("o1"), 0) != proof.signature(trace("o2"), 0)
    chance = proof.chance_of([trace("o1"), trace("o2"), trace("o1"), trace("o2")], 0, "forward")
    assert (chance.agreeing, chance.pairs) == (2, 5)  # less the pair that started the search


def test_the_horizon_grows_only_when_the_parting_step_cannot_beat_chance():
    def trace(*batches):
        return [{"type": "init", "params": ["a"]}] + [
            {"type": "step", "step": i, "inputs": b, "loss": "l"} for i, b in enumerate(batches)]

    # Four of five runs got the same first batch, but later batches differ: step 0 alone would
    # need more than MAX_PAIRS agreeing pairs, the whole run does not.
    traces = [trace("a", str(i), "x") for i in range(4)] + [trace("b", "9", "x")]
    upto, chance = proof.horizon(traces, 0, "data")
    assert upto == 2 and chance.agreeing == 0
    assert proof.pairs_needed(chance.rate) <= proof.MAX_PAIRS
    # When step 0 can prove something, it is kept: later steps may part for other causes.
    varied = [trace(str(i), "y", str(i)) for i in range(4)]
    assert proof.horizon(varied, 0, "data")[0] == 0
    # No longer horizon helps when the runs agree later as often: the parting step stays.
    same_later = [trace("a", "y", "x")] * 4 + [trace("b", "y", "x")]
    assert proof.horizon(same_later, 0, "data")[0] == 0
