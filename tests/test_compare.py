"""The first parting of two traces, stage by stage, on hand-made traces."""
import copy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audit.probes.run import compare

NAMES = ["a.weight", "a.bias", "b.weight"]


def trace(steps=3):
    recs = [{"type": "params", "names": NAMES},
            {"type": "init", "params": ["p0", "p1", "p2"]}]
    for i in range(steps):
        recs.append({"type": "step", "step": i, "inputs": f"x{i}", "targets": f"y{i}",
                     "inputs_rows": [f"x{i}r{k}" for k in range(4)],
                     "targets_rows": [f"y{i}r{k}" for k in range(4)],
                     "rng": {"torch_cpu": f"r{i}", "numpy": "n", "python": "p"},
                     "loss": f"l{i}", "grads": [f"g{i}{k}" for k in range(3)],
                     "params": [f"q{i}{k}" for k in range(3)]})
    return recs


def step(recs, i):
    return [r for r in recs if r.get("type") == "step"][i]


def test_identical_traces_do_not_part():
    assert compare.first_parting(trace(), trace()) is None


def test_init():
    b = trace()
    b[1]["params"][1] = "other"
    p = compare.first_parting(trace(), b)
    assert (p.step, p.stage, p.tensor) == (None, "init", "a.bias")


def test_a_run_that_ended_before_its_parameters_does_not_part():
    """A run that crashed at start-up (no init record, no step) is a crash, not a parting."""
    assert compare.first_parting(trace(), trace()[:1]) is None
    assert compare.first_parting([], trace()) is None


@pytest.mark.parametrize("key,stage,tensor", [
    ("loss", "forward", None), ("grads", "backward", "b.weight"), ("params", "optimizer", "b.weight")])
def test_each_stage_of_a_step(key, stage, tensor):
    b = trace()
    rec = step(b, 1)
    if isinstance(rec[key], list):
        rec[key][2] = "zz"
    else:
        rec[key] = "zz"
    p = compare.first_parting(trace(), b)
    assert (p.step, p.stage, p.tensor) == (1, stage, tensor)


def test_data_content_versus_order():
    b = trace()
    step(b, 0)["inputs"] = "other"
    step(b, 0)["inputs_rows"][0] = "new"
    p = compare.first_parting(trace(), b)
    assert (p.stage, p.tensor, p.data) == ("data", "inputs", "content")

    c = trace()
    rec = step(c, 0)
    rec["inputs"], rec["targets"] = "perm", "perm"
    rec["inputs_rows"].reverse()
    rec["targets_rows"].reverse()
    assert compare.first_parting(trace(), c).data == "order"


def test_batches_swapped_between_steps_are_an_order_difference():
    b = trace()
    s0, s1 = step(b, 0), step(b, 1)
    for key in ("inputs", "targets", "inputs_rows", "targets_rows"):
        s0[key], s1[key] = s1[key], s0[key]
    p = compare.first_parting(trace(), b)
    assert (p.step, p.stage, p.data) == (0, "data", "order")


def test_targets_alone():
    b = trace()
    step(b, 2)["targets"] = "t"
    step(b, 2)["targets_rows"][1] = "t"
    p = compare.first_parting(trace(), b)
    assert (p.step, p.stage, p.tensor) == (2, "data", "targets")


def test_rng_counts_only_when_something_follows():
    b = trace()
    step(b, 1)["rng"] = {"torch_cpu": "other", "numpy": "n", "python": "p"}
    assert compare.first_parting(trace(), b) is None  # latent: nothing depends on it
    assert compare.rng_only([trace(), b]) == [1]
    step(b, 2)["loss"] = "changed"
    p = compare.first_parting(trace(), b)
    assert (p.step, p.stage, p.streams) == (1, "rng", ["torch_cpu"])


def test_a_shorter_run_is_compared_over_the_steps_both_made():
    assert compare.first_parting(trace(3), trace(5)) is None


def test_timeline_marks_missing_steps_and_differences():
    b = trace(2)
    step(b, 1)["grads"][0] = "x"
    rows = compare.timeline([trace(3), b])
    assert rows[0].stages == {"init": "agree"}
    assert rows[2].stages["backward"] == "differ" and rows[2].stages["forward"] == "agree"
    assert set(rows[3].stages.values()) == {"missing"}


@given(st.integers(0, 4), st.sampled_from(["data", "forward", "backward", "optimizer"]),
       st.integers(0, 4), st.sampled_from(["data", "forward", "backward", "optimizer"]))
def test_the_earliest_of_several_partings_wins(s1, st1, s2, st2):
    keys = {"data": "inputs", "forward": "loss", "backward": "grads", "optimizer": "params"}

    def broken(i, stage):
        b = trace(5)
        rec = step(b, i)
        rec[keys[stage]] = ["zz"] * 3 if isinstance(rec[keys[stage]], list) else "zz"
        return compare.first_parting(trace(5), b)

    p = compare.earliest([broken(s1, st1), broken(s2, st2)])
    order = ["data", "rng", "forward", "backward", "optimizer"]
    assert (p.step, order.index(p.stage)) == min((s1, order.index(st1)), (s2, order.index(st2)))


def _with_modules(events):
    recs = trace(1)
    step(recs, 0)["modules"] = events
    return recs


def test_localize_forward_names_the_first_module_whose_inputs_agree():
    a = [["", 0, "in", "x"], ["0", 0, "in", "x"], ["0", 0, "out", "h"],
         ["1", 0, "in", "h"], ["1", 0, "out", "o"], ["", 0, "out", "o"]]
    b = copy.deepcopy(a)
    b[4][3] = "o2"  # module 1 parts...
    b[5][3] = "o2"  # ...and the container's output with it
    assert compare.localize(_with_modules(a), _with_modules(b), 0, "forward") == ("1", None)


def test_localize_backward_names_the_child_not_its_container():
    a = [["", 0, "gout0", "g"], ["1", 0, "gout0", "g"], ["1", 0, "gin0", "gh"],
         ["0", 0, "gout0", "gh"], ["", 0, "gin0", "gx"], ["0", 0, "gin0", "gx"]]
    b = copy.deepcopy(a)
    b[4][3] = b[5][3] = "gx2"  # only module 0's input gradient differs
    ra, rb = _with_modules(a), _with_modules(b)
    assert compare.localize(ra, rb, 0, "backward")[0] == "0"
