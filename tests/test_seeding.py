"""Seeds the matched seed does not reach, and the same answer on every audit.

In process: seeding calls are logged with the user's place and value; sites whose values change
between runs are found (and seeds equal in every run never are); draws from global generators
made before seeding are seen at their line; a forward divergence that the loss rounds away is
still a forward divergence. End to end (fresh processes, once per session, two audits at a time):
an order-dependent layer gets the same stage and module on every audit; planted run-time seeds
(the clock in the builder and in a worker_init_fn, np.random.seed() without a seed, a worker
reseeding Python's random from its PID) and scripts that draw before they seed are caught at
their line with the right fix; their fixed versions, and workers seeded per worker from
torch.initial_seed(), pass.
"""
from __future__ import annotations

import json
import os
import random
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from audit import cli
from audit.probes.run import rng_escape, seed_log
from audit.probes.run import compare
from audit.probes.determinism import seeds
from audit.probes.run.launcher import RunOptions
from audit.probes.determinism.orchestrate import audit_determinism
from audit.probes.script.draws import DrawWatch

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = os.path.join(HERE, "targets")
SCRIPTS = os.path.join(HERE, "scripts")


def line_of(path: str, marker: str) -> int:
    with open(path) as fh:
        return next(i for i, line in enumerate(fh, 1) if marker in line and "line_of" not in line)


# ------------------------------------------------------------------------------ in process


def test_seeding_calls_are_logged_with_place_and_value(tmp_path):
    path = str(tmp_path / "seeds")
    rng_escape.install(None, seeds_path=path)
    try:
        torch.manual_seed(7)  # seed-torch
        np.random.seed(11)  # seed-numpy
        random.Random(3)  # seed-random
        np.random.SeedSequence(entropy=5)  # seed-sequence
        torch.Generator().manual_seed(2 ** 60)  # seed-generator
        torch.nn.Linear(2, 2)  # torch's own code seeds nothing here; nothing is logged
    finally:
        rng_escape.uninstall()
    calls = [(c["kind"], int(c["where"].rsplit(":", 1)[1]), c["value"], c["worker"])
             for c in seed_log.read(path)]
    assert calls == [
        ("torch.manual_seed", line_of(__file__, "# seed-torch"), 7, None),
        ("numpy.random.seed", line_of(__file__, "# seed-numpy"), 11, None),
        ("random.Random", line_of(__file__, "# seed-random"), 3, None),
        ("numpy.random.SeedSequence", line_of(__file__, "# seed-sequence"), 5, None),
        ("torch.Generator.manual_seed", line_of(__file__, "# seed-generator"), str(2 ** 60), None),
    ]


def _pinned_draw(value: int, where: str) -> float:
    rng_escape.install(None)
    rng_escape.pin_sites([where])
    try:
        torch.manual_seed(value)  # pinned-site
        return torch.rand(1).item()
    finally:
        rng_escape.uninstall()


def test_pinned_sites_get_the_same_seed_whatever_they_compute():
    where = f"{seed_log.short_path(__file__)}:{line_of(__file__, '# pinned-site')}"
    assert _pinned_draw(123, where) == _pinned_draw(456, where)
    assert _pinned_draw(123, "elsewhere.py:1") != _pinned_draw(456, "elsewhere.py:1")


site = st.tuples(st.sampled_from(["torch.manual_seed", "random.seed"]),
                 st.sampled_from(["a.py:1", "a.py:2", "b.py:9"]))
call_lists = st.lists(st.tuples(site, st.integers(0, 2 ** 32), st.sampled_from([None, 0, 1])),
                      max_size=8)


@settings(max_examples=60, deadline=None)
@given(call_lists, st.randoms())
def test_seeds_equal_in_every_run_never_vary(calls, rnd):
    run = [{"kind": k, "where": w, "value": v, "worker": wk} for (k, w), v, wk in calls]
    other = list(run)
    rnd.shuffle(other)  # workers log in any order
    assert seeds.varying([run, other], set()) == []


@settings(max_examples=60, deadline=None)
@given(call_lists.filter(bool), st.data())
def test_a_changed_value_is_reported_at_its_site(calls, data):
    run = [{"kind": k, "where": w, "value": v, "worker": wk} for (k, w), v, wk in calls]
    i = data.draw(st.integers(0, len(run) - 1))
    other = [dict(c) for c in run]
    other[i]["value"] = run[i]["value"] + 1
    found = seeds.varying([run, other], set())
    assert (run[i]["kind"], run[i]["where"]) in {(c.kind, c.where) for c in found}
    assert seeds.varying([run, other], {run[i]["where"]}) == [
        c for c in found if c.where != run[i]["where"]]


def test_draws_before_seeding_are_seen_at_their_line(tmp_path):
    log = str(tmp_path / "escapes")
    depth = torch._C._len_torch_function_stack()
    watch = DrawWatch(log)
    watch.install()
    try:
        nn.Linear(3, 3)  # draw-torch
        torch.manual_seed(0)  # seed-torch-late
        torch.randn(3)  # seeded: not a draw
        random.random()  # draw-python
        np.random.seed(1)  # numpy seeded before any draw
        np.random.rand()
    finally:
        watch.finish()
    assert torch._C._len_torch_function_stack() == depth  # the mode is gone
    assert random.random.__self__ is random._inst and not hasattr(random.random, "__wrapped__")
    found = {e["kind"]: e for e in rng_escape.read_log(log)}
    assert set(found) == {"torch global generator", "python random global generator"}
    assert found["torch global generator"]["where"].endswith(f":{line_of(__file__, '# draw-torch')}")
    assert f":{line_of(__file__, '# seed-torch-late')}" in found["torch global generator"]["detail"]
    assert found["python random global generator"]["where"].endswith(
        f":{line_of(__file__, '# draw-python')}")
    assert "never seeded" in found["python random global generator"]["detail"]


def test_a_state_the_process_gave_out_restores_and_does_not_seed(tmp_path):
    """Lightning's isolate_rng, torch.utils.checkpoint and fork_rng take the state and hand it
    back: the generator stays unseeded. A state from elsewhere (a checkpoint) does seed."""
    log = str(tmp_path / "escapes")
    watch = DrawWatch(log)
    watch.install()
    try:
        torch.randn(2)  # draw-torch-unseeded
        torch.set_rng_state(torch.get_rng_state())
        random.random()  # draw-python-unseeded
        random.setstate(random.getstate())
        np.random.rand()  # draw-numpy
        np.random.set_state(np.random.RandomState(3).get_state())  # seed-numpy-from-elsewhere
    finally:
        watch.finish()
    found = {e["kind"]: e for e in rng_escape.read_log(log)}
    assert "never seeded" in found["torch global generator"]["detail"]
    assert "never seeded" in found["python random global generator"]["detail"]
    assert f":{line_of(__file__, '# seed-numpy-from-elsewhere')}" in found[
        "numpy global generator"]["detail"]


def test_outputs_part_the_forward_pass_when_the_loss_rounds_alike():
    a = {"inputs": "1", "targets": "2", "rng": {}, "loss": "5", "outputs": "7", "grads": ["8"],
         "params": ["9"]}
    b = dict(a, outputs="70", grads=["80"])
    assert compare.stage_states(a, b)["forward"] == "differ"
    parting = compare.first_parting([{"type": "step", "step": 0, **a}],
                                    [{"type": "step", "step": 0, **b}])
    assert (parting.step, parting.stage) == (0, "forward")


# ------------------------------------------------------------------------------ end to end

#: Audits of the order-dependent layer, one after another (its runs alternate the order through
#: one counter, so two of these audits must not interleave their runs).
REPEATS = 3
TARGET_AUDITS = {  # name: (target file, steps, attribute)
    "order": ("order_sum", 2, False),
    "clock_builder": ("seed_clock_builder", 2, True),
    "worker_clock": ("worker_clock_numpy", 2, True),
    "numpy_os": ("numpy_reseed_os", 2, True),
    "worker_derived": ("worker_seeds_derived", 3, True),
}
SCRIPT_AUDITS = ["no_seed", "no_seed_fixed", "model_before_seed", "model_before_seed_fixed",
                 "split_before_seed", "split_before_seed_fixed", "worker_pid_random"]
#: The order the audits start in: those that attribute a cause (repeated knob pairs) first, the
#: ones that pass (two runs each) last, so that the two audits at a time end together.
CHEAP = ("worker_derived",) + tuple(n for n in SCRIPT_AUDITS if n.endswith("_fixed"))
ORDER = [n for n in [*TARGET_AUDITS, *SCRIPT_AUDITS] if n not in CHEAP] + list(CHEAP)


def _target_audit(name: str):
    target, steps, attribute = TARGET_AUDITS[name]
    opts = RunOptions(target=os.path.join(TARGETS, f"{target}.py") + ":build",
                              steps=steps, runs=2, cwd=TARGETS, attribute=attribute)
    if name == "order":
        return [audit_determinism(opts) for _ in range(REPEATS)]
    return audit_determinism(opts)


def _script_audit(name: str, out_root: str):
    out = os.path.join(out_root, name)
    code = cli.main(["determinism", "--jobs", "2", "--quiet", "--steps", "2", "--out", out,
                     "--", "python", os.path.join("tests", "scripts", f"{name}.py")])
    with open(os.path.join(out, "determinism.json")) as fh:
        return code, json.load(fh)


@pytest.fixture(scope="session")
def audits(tmp_path_factory):
    out_root = str(tmp_path_factory.mktemp("seeding"))
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "PYTHONHASHSEED", "AUDIT_TEST_COUNTER")}
    old_cwd = os.getcwd()
    os.chdir(os.path.dirname(HERE))
    os.environ.update(OMP_NUM_THREADS="1", PYTHONHASHSEED="0",
                      AUDIT_TEST_COUNTER=os.path.join(out_root, f"counter-{uuid.uuid4().hex}"))
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = {name: pool.submit(_target_audit, name) if name in TARGET_AUDITS
                       else pool.submit(_script_audit, name, out_root) for name in ORDER}
            return {name: f.result() for name, f in futures.items()}
    finally:
        os.chdir(old_cwd)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_an_order_dependent_layer_gets_the_same_answer_every_time(audits):
    answers = [(r.verdict, r.first_divergence.step, r.first_divergence.stage,
                r.first_divergence.module) for r in audits["order"]]
    assert answers == [("nondeterministic", 0, "forward", "2")] * REPEATS


def _first(result):
    return result.causes[0]


def test_a_clock_seed_in_the_builder(audits):
    r = audits["clock_builder"]
    assert (r.first_divergence.stage, r.first_divergence.tensor) == ("init", "0.weight")
    c = _first(r)
    assert (c.source, c.confirmed) == ("unseeded_rng", True)
    path = os.path.join(TARGETS, "seed_clock_builder.py")
    assert c.where.endswith(f"seed_clock_builder.py:{line_of(path, 'PLANTED')}")
    assert c.fix.startswith("torch.manual_seed(seed)")
    assert [(s.kind, len(s.values)) for s in r.varying_seeds] == [("torch.manual_seed", 2)]


def test_a_worker_init_fn_that_reseeds_numpy_from_the_clock(audits):
    r = audits["worker_clock"]
    assert r.first_divergence.stage == "data"
    c = _first(r)
    assert (c.source, c.confirmed) == ("unseeded_rng", True)
    path = os.path.join(TARGETS, "worker_clock_numpy.py")
    assert c.where.endswith(f"worker_clock_numpy.py:{line_of(path, 'PLANTED: the clock')}")
    assert "worker_init_fn" in c.fix and "np.random.seed(seed)" in c.fix
    assert r.varying_seeds[0].in_workers


def test_numpy_reseeded_without_a_seed(audits):
    r = audits["numpy_os"]
    assert r.first_divergence.stage == "data"
    c = _first(r)
    assert (c.source, c.confirmed) == ("unseeded_rng", True)
    assert c.where.endswith(f"numpy_reseed_os.py:{line_of(os.path.join(TARGETS, 'numpy_reseed_os.py'), 'PLANTED')}")


def test_workers_seeded_from_torch_initial_seed_pass(audits):
    r = audits["worker_derived"]
    assert r.verdict == "deterministic", r.first_divergence
    assert r.varying_seeds == [] and r.causes == []


def _script_cause(doc: dict) -> dict:
    return doc["causes"][0]


@pytest.mark.parametrize("name, stage, marker", [
    ("no_seed", "init", "features = torch.randn(64, 10)"),
    ("model_before_seed", "init", "self.body = nn.Sequential"),
    ("split_before_seed", "data", "train_set, val_set = random_split"),
])
def test_scripts_that_draw_before_they_seed(audits, name, stage, marker):
    code, doc = audits[name]
    assert code == 1 and doc["first_divergence"]["stage"] == stage
    c = _script_cause(doc)
    assert (c["source"], c["confirmed"]) == ("unseeded_rng", True)
    assert c["where"].endswith(f"{name}.py:{line_of(os.path.join(SCRIPTS, name + '.py'), marker)}")
    assert c["fix"].startswith("torch.manual_seed(seed)") and "generator=" in c["fix"]


def test_a_worker_reseeding_pythons_random_from_its_pid(audits):
    code, doc = audits["worker_pid_random"]
    assert code == 1 and doc["first_divergence"]["stage"] == "data"
    c = _script_cause(doc)
    assert (c["source"], c["confirmed"]) == ("unseeded_rng", True)
    path = os.path.join(SCRIPTS, "worker_pid_random.py")
    assert c["where"].endswith(f"worker_pid_random.py:{line_of(path, 'random.seed(os.getpid())')}")
    assert "random.seed(seed)" in c["fix"] and "torch.initial_seed()" in c["fix"]


@pytest.mark.parametrize("name", [n for n in SCRIPT_AUDITS if n.endswith("_fixed")])
def test_fixed_scripts_pass(audits, name):
    code, doc = audits[name]
    assert (code, doc["verdict"], doc["causes"]) == (0, "deterministic", []), doc["first_divergence"]
