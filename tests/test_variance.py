"""``audit variance`` / ``audit compare`` on targets of known random structure.

Most runs go through the worker in this process (the same code a fresh process runs, without
paying for a torch import per run); the fresh-process pool is tested on its own.
"""
import os

import pytest

from audit.probes.errors import ChildExit, TargetError, UsageError
from audit.probes.results.variance import VARIANCE_SOURCES, CompareResult, VarianceResult
from audit.probes.child import variance as worker
from audit.probes.variance.compare import CompareOptions, audit_compare
from audit.probes.variance.engine import VarianceOptions, audit_variance
from audit.probes.variance.runner import PoolOptions, RunOutcome, RunSpec, worker_spec

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = os.path.join(HERE, "targets", "variance_targets.py")


def in_process(runs, pool_opts, on_done, stop):
    outs = []
    for i, run in enumerate(runs):
        code, report = worker.run(worker_spec(run, pool_opts, i == 0))
        outs.append(RunOutcome(run, code, report))
        on_done(outs[-1])
        if stop(outs[-1]):
            break
    return outs


def variance(name, seeds=3, steps=4, device_override="cpu", **kw):
    opts = VarianceOptions(target=f"{TARGETS}:{name}", seeds=seeds, steps=steps,
                           device=device_override, **kw)
    return audit_variance(opts, runner=in_process)


def stds(result, metric="loss"):
    return {s: st.std for s, st in result.metrics[metric].sources.items()}


def test_full_batch_model_varies_only_with_init():
    result = variance("full_batch")
    spread = stds(result)
    assert spread["data"] == spread["augment"] == spread["dropout"] == 0.0
    assert spread["init"] > 0 and spread["all"] > 0
    assert result.metrics["loss"].sources["data"].share == 0.0
    assert result.controlled is True and result.dominant["loss"] == "init"
    assert [r.source for r in result.routing] == ["init", "data", "augment", "dropout"]
    assert result.passed


def test_dropout_with_fixed_init_and_data_varies_only_under_dropout():
    spread = stds(variance("dropout_fixed"))
    assert spread["init"] == spread["data"] == spread["augment"] == 0.0
    assert spread["dropout"] > 0 and spread["all"] > 0


def test_shuffled_augmented_loader_splits_into_data_and_augment():
    result = variance("loader")
    spread = stds(result)
    assert spread["data"] > 0 and spread["augment"] > 0
    assert spread["init"] == spread["dropout"] == 0.0
    data = next(r for r in result.routing if r.source == "data")
    assert data.separable and "RandomSampler" in data.how


def test_randomness_no_seed_reaches_is_said_not_split():
    result = variance("unreached", seeds=2, steps=2, sources=("dropout",))
    assert result.controlled is False and result.control_spread > 0
    assert any(r.source == "unreached" and not r.separable for r in result.routing)
    assert not result.passed


def compare(a, b, seeds=6, steps=8, **kw):
    opts = CompareOptions(f"{TARGETS}:{a}", f"{TARGETS}:{b}", seeds=seeds, steps=steps,
                          device="cpu", **kw)
    return audit_compare(opts, runner=in_process)


def test_a_learning_rate_that_trains_beats_one_that_does_not():
    res = compare("regression,lr=0.0", "regression,lr=0.05")
    assert res.metric == "mse" and res.direction == "lower"
    assert res.verdict == "better" and res.p_value < 0.05
    assert res.prob_improvement == 1.0 and all(d < 0 for d in res.deltas)
    assert res.ci[1] < 0 and res.seeds_needed is not None and res.passed


def test_a_learning_rate_that_does_not_train_is_worse():
    res = compare("regression,lr=0.05", "regression,lr=0.0")
    assert res.verdict == "worse" and not res.passed


def test_two_variants_that_compute_the_same_thing_show_no_difference():
    res = compare("regression,form='double'", "regression,form='sum'", seeds=3, steps=4)
    assert res.verdict == "no_difference" and res.deltas == [0.0, 0.0, 0.0]
    assert res.p_value == 1.0 and res.seeds_needed is None


def test_a_crashed_run_is_reported_and_excluded():
    res = compare("full_batch", "full_batch,crash_seed=1", seeds=3, steps=2, metric="loss")
    crashed = res.crashed
    assert [(r.group, r.seed, r.status) for r in crashed] == [("b", 1, "crashed")]
    assert "planted crash" in crashed[0].message and crashed[0].where.endswith("variance_targets.py:30")
    assert res.paired_seeds == [0, 2] and len(res.deltas) == 2
    assert res.error.startswith("1 of 6 runs crashed")


def test_a_target_that_fails_to_build_for_one_seed_is_a_failed_run_not_an_error():
    res = compare("full_batch", "full_batch,build_crash_seed=2", seeds=3, steps=1)
    assert [(r.group, r.seed, r.status) for r in res.crashed] == [("b", 2, "target_error")]
    assert "planted failure" in res.crashed[0].message and res.paired_seeds == [0, 1]
    assert "crashed" in res.error


def test_the_worker_exit_status_says_how_the_run_ended():
    def code(target: str, seed: int) -> int:
        run = RunSpec("all", seed, dict.fromkeys(VARIANCE_SOURCES, seed), f"{TARGETS}:{target}")
        return worker.run(worker_spec(run, PoolOptions(steps=1, device="cpu")))[0]

    assert code("full_batch,crash_seed=1", 0) == ChildExit.OK
    assert code("full_batch,crash_seed=1", 1) == ChildExit.CRASH
    assert code("full_batch,build_crash_seed=2", 2) == ChildExit.TARGET


def test_unknown_metric_and_bad_counts_are_usage_errors():
    with pytest.raises(UsageError, match="--metric nope"):
        compare("full_batch", "full_batch", seeds=2, steps=1, metric="nope")
    with pytest.raises(UsageError, match="--seeds 1"):
        variance("full_batch", seeds=1)
    with pytest.raises(UsageError, match="--sources"):
        variance("full_batch", sources=("weights",))


def test_a_target_that_cannot_load_stops_the_audit():
    with pytest.raises(TargetError, match="no 'missing'"):
        variance("missing", seeds=2, steps=1)


def test_results_round_trip_through_json():
    v = variance("full_batch", seeds=2, steps=2)
    assert VarianceResult.from_dict(v.to_dict()).to_dict() == v.to_dict()
    assert list(v.to_dict())[:4] == ["schema", "seeds", "steps", "metrics"]
    c = compare("full_batch", "full_batch", seeds=2, steps=2)
    assert CompareResult.from_dict(c.to_dict()).to_dict() == c.to_dict()
    assert list(c.to_dict())[:5] == ["schema", "seeds", "metric", "direction", "verdict"]


def test_fresh_processes_in_parallel_with_progress_and_a_crash():
    seen = []
    opts = VarianceOptions(target=f"{TARGETS}:full_batch,crash_seed=1", seeds=2, steps=2,
                           sources=("init",), jobs=2, device="cpu")
    result = audit_variance(opts, progress=seen.append)
    # one bar for the runs: each finished run moves it by one and has a log line of its own
    assert [(e.phase, e.done, e.total, e.unit) for e in seen] == [("4 runs", i, 4, "run") for i in (1, 2, 3, 4)]
    assert len({e.note for e in seen}) == 4
    assert sorted((r.group, r.status) for r in result.crashed) == [("all", "crashed"), ("init", "crashed")]
    init = result.metrics["loss"].sources["init"]
    assert init.seeds == [0] and init.excluded == 1
    assert result.environment.get("torch") and result.device == "cpu"


@pytest.mark.cuda
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_dropout_on_cuda_follows_the_dropout_seed_alone():
    spread = stds(variance("dropout_fixed", device_override="cuda"))
    assert spread["init"] == spread["data"] == spread["augment"] == 0.0
    assert spread["dropout"] > 0
