"""End to end: planted sources of nondeterminism are found, localized and proven; busy but
deterministic targets pass. Each audit spawns fresh Python processes, so the audits run once
per session, two at a time, and the tests assert on their results."""
import os
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from audit.probes.run.launcher import RunOptions

from audit.probes.determinism.orchestrate import audit_determinism

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = os.path.join(HERE, "targets")

#: target -> steps, the longest audits first (worker processes measured per audit: 16, 16, 12,
#: 12, four of 10, 8, 6, 2), so that the two audits at a time end together instead of one long
#: audit running alone at the end.
PLANTED = {
    "worker_order": 8,
    "thread_sum": 4,
    "clock_forward": 2,
    "optimizer_atomic": 3,
    "init_hash": 2,
    "hash_order": 3,
    "unseeded_data": 3,
    "reseeded_dropout": 3,
    "atomic_backward": 3,
    "forward_noise": 3,
    "deterministic_loader": 3,
}


def _audit(name: str, steps: int):
    os.environ.setdefault("AUDIT_TEST_COUNTER", os.path.join(
        os.environ.get("TMPDIR", "/tmp"), f"audit-counter-{uuid.uuid4().hex}"))
    opts = RunOptions(target=os.path.join(TARGETS, f"{name}.py") + ":build",
                              steps=steps, runs=2, cwd=TARGETS)
    return audit_determinism(opts)


@pytest.fixture(scope="session")
def audits():
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(_audit, name, steps) for name, steps in PLANTED.items()}
        return {name: f.result() for name, f in futures.items()}


def first_cause(result):
    return result.causes[0] if result.causes else None


def test_busy_but_deterministic_loader_passes(audits):
    r = audits["deterministic_loader"]
    assert r.verdict == "deterministic", r.first_divergence
    assert r.first_divergence is None and r.causes == [] and r.error is None
    assert all(row.stages.get(s, "agree") == "agree" for row in r.timeline for s in row.stages)


def test_unseeded_generator_in_the_data(audits):
    r = audits["unseeded_data"]
    d = r.first_divergence
    assert (r.verdict, d.step, d.stage, d.tensor) == ("nondeterministic", 0, "data", "inputs")
    assert d.max_abs_diff and d.max_abs_diff > 0
    c = first_cause(r)
    assert (c.source, c.confirmed) == ("unseeded_rng", True)
    assert c.where.endswith("unseeded_data.py:10")
    assert "default_rng(seed)" in c.fix
    assert r.detail["data_difference"] == "content"


def test_hash_seed_dependent_labels(audits):
    r = audits["hash_order"]
    d = r.first_divergence
    assert (d.stage, d.tensor) == ("data", "targets")
    c = first_cause(r)
    assert (c.source, c.confirmed) == ("hash_seed", True)
    assert "PYTHONHASHSEED" in c.fix


def test_atomic_add_stand_in_is_localized_to_its_module(audits):
    r = audits["atomic_backward"]
    d = r.first_divergence
    assert (d.stage, d.module, d.tensor) == ("backward", "2", "2.weight")
    c = first_cause(r)
    assert (c.source, c.confirmed) == ("nondeterministic_algorithm", True)
    assert "use_deterministic_algorithms(True)" in c.fix
    assert c.where.endswith("atomic_backward.py:36")  # AtomicLinear.forward


def test_os_seeded_generator_in_a_module(audits):
    r = audits["forward_noise"]
    d = r.first_divergence
    assert (d.step, d.stage, d.module) == (0, "forward", "2")
    assert d.max_abs_diff > 0
    c = first_cause(r)
    assert (c.source, c.confirmed) == ("unseeded_rng", True)
    assert c.where.endswith("forward_noise.py:11")


def test_reseeding_from_the_os_parts_the_rng_state(audits):
    r = audits["reseeded_dropout"]
    d = r.first_divergence
    assert (d.step, d.stage) == (0, "rng")
    assert r.detail["rng_streams"] == ["torch_cpu"]
    c = first_cause(r)
    assert (c.source, c.where.rsplit(":", 1)[-1]) == ("unseeded_rng", "10")
    assert "torch.manual_seed(seed)" in c.fix


def test_out_of_order_workers(audits):
    r = audits["worker_order"]
    d = r.first_divergence
    assert d.stage == "data" and d.step in (0, 1)  # which worker is slow decides the step
    assert r.detail["data_difference"] == "order"
    c = first_cause(r)
    assert (c.source, c.confirmed) == ("dataloader", True)
    assert c.where.endswith("worker_order.py:29")
    assert "in_order=True" in c.fix


def test_thread_count(audits):
    r = audits["thread_sum"]
    assert r.verdict == "nondeterministic"
    c = first_cause(r)
    assert (c.source, c.confirmed) == ("thread_count", True)
    assert c.where.endswith("thread_sum.py:20")


def test_growth_is_measured_from_the_replay(audits):
    r = audits["unseeded_data"]
    assert [g.step for g in r.growth] == [0, 1, 2]
    diffs = [g.max_abs_diff for g in r.growth]
    assert all(x > 0 for x in diffs) and diffs == sorted(diffs)


def test_attribution_stops_at_the_divergent_step(audits):
    r = audits["unseeded_data"]
    assert r.knob_trials and all(t.steps == r.first_divergence.step + 1 for t in r.knob_trials)


def test_json_follows_the_contract(audits):
    import json

    data = json.loads(json.dumps(audits["atomic_backward"].to_dict()))
    assert list(data)[:9] == ["schema", "verdict", "runs", "steps", "seed", "device",
                             "environment", "first_divergence", "causes"]
    assert data["schema"] == "audit.determinism/1"
    assert set(data["first_divergence"]) == {"step", "stage", "module", "tensor", "max_abs_diff"}
    assert set(data["causes"][0]) == {"source", "confirmed", "evidence", "fix", "where"}


def test_initial_parameters_that_follow_the_hash_seed(audits):
    r = audits["init_hash"]
    d = r.first_divergence
    assert (d.step, d.stage, d.tensor) == (None, "init", "0.weight")
    assert d.max_abs_diff > 0
    assert (first_cause(r).source, first_cause(r).confirmed) == ("hash_seed", True)


def test_an_optimizer_that_adds_in_a_random_order(audits):
    r = audits["optimizer_atomic"]
    d = r.first_divergence
    assert d.stage == "optimizer"  # the order is drawn per step; some orders round alike
    assert d.tensor.endswith("weight") or d.tensor.endswith("bias")
    assert (first_cause(r).source, first_cause(r).confirmed) == ("nondeterministic_algorithm", True)


def test_no_knob_removes_the_clock(audits):
    r = audits["clock_forward"]
    d = r.first_divergence
    assert (d.stage, d.module) == ("forward", "2")
    c = first_cause(r)
    assert (c.source, c.confirmed) == ("unknown", False)
    assert c.where.endswith("clock_forward.py:10")
    assert len(r.knob_trials) >= 3 and not any(t.removed for t in r.knob_trials)
