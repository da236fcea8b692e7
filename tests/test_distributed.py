"""``audit determinism --nproc 2`` end to end on CPU with gloo: a clean DDP trainer passes; each
planted fault (tests/targets/ddp_faults.py) is caught and attributed; a crashing rank leaves no
process behind. The audits run once per module, two at a time; then pure checks of the replica
and sampler analysis on hand-made traces."""
import json
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import BatchSampler, DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from audit import cli
from audit.kinds.determinism import checks
from audit.probes.determinism.distributed import audit_distributed
from audit.probes.run.merge import merge, strip_name
from audit.probes.run.compare import first_parting
from audit.probes.run.launcher import RunOptions
from audit.probes.determinism.replicas import replica_parting
from audit.probes.determinism.samplers import sampler_causes
from audit.probes.results import DeterminismResult
from audit.probes.run.training import cycle_batches

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = os.path.join(HERE, "targets")
TARGET = os.path.join(TARGETS, "ddp_faults.py")

#: fault -> (steps, attribution); 32 samples over 2 ranks in batches of 4: 4 steps an epoch.
#: The longest audit (attribution's knob pairs) starts first.
AUDITS = {"dropout": (2, True), "clean": (6, False), "buffer": (3, False), "param": (3, False),
          "crash": (4, False)}


def _audit(fault: str):
    steps, attribution = AUDITS[fault]
    target = TARGET + ":build" + ("" if fault == "clean" else f",fault={fault!r}")
    opts = RunOptions(target=target, steps=steps, runs=2, jobs=2, cwd=TARGETS,
                              attribute=attribution)
    return audit_distributed(opts, 2, timeout=30)


def _cli_audit(out) -> int:
    """The plain DataLoader (no set_epoch anywhere in the target) through the CLI, with a
    target path relative to the working folder (the fixture's, TARGETS)."""
    return cli.main(["determinism", "ddp_faults.py:build,fault='plain'", "--nproc", "2",
                     "--steps", "6", "--jobs", "2", "--out", str(out)])


@pytest.fixture(scope="module")
def audits(tmp_path_factory):
    """Every audit above and the CLI's, two at a time (the CLI's last: it starts when the
    first audits end, instead of alone after them)."""
    out = tmp_path_factory.mktemp("ddp") / "out"
    old_cwd = os.getcwd()
    os.chdir(TARGETS)
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = {fault: pool.submit(_audit, fault) for fault in AUDITS}
            futures["cli"] = pool.submit(_cli_audit, out)
            results = {fault: f.result() for fault, f in futures.items()}
    finally:
        os.chdir(old_cwd)
    results["cli_out"] = out
    return results


def _check(result, name):
    return next(c for c in checks(result) if c.name == name)


def _line(marker: str) -> int:
    with open(TARGET, encoding="utf-8") as fh:
        return next(i for i, line in enumerate(fh, 1) if marker in line)


def test_clean_ddp_trainer_passes(audits):
    r = audits["clean"]
    assert (r.verdict, r.nproc, r.error) == ("deterministic", 2, None)
    assert r.replicas.verdict == "consistent" and r.replicas.first is None
    # BatchNorm statistics differ at the end of each step, but DDP broadcasts them: no flag.
    assert len(r.replicas.grid) == 7 and all(set(row.ranks) == {"agree"} for row in r.replicas.grid)
    assert r.causes == []
    assert [t.rank for t in r.rank_timelines] == [0, 1]
    assert "disjoint" in r.detail["sharding"]
    names = {c.name: c.passed for c in checks(r)}
    assert names["runs agree on every rank"] and names["replicas agree"]
    assert names["sampler reshuffles per epoch"]
    data = r.to_dict()
    assert data["nproc"] == 2 and data["replicas"] == {
        **data["replicas"], "verdict": "consistent", "first": None}
    assert DeterminismResult.from_dict(json.loads(json.dumps(data))).to_dict() == data


def test_buffer_updated_per_rank_without_broadcast(audits):
    r = audits["buffer"]
    first = r.replicas.first
    assert r.verdict == "deterministic" and r.replicas.verdict == "diverged"
    assert (first.step, first.tensor, first.rank, r.replicas.kind) == (1, "1.mean", 1, "buffer")
    cause = r.causes[0]
    assert (cause.source, cause.confirmed) == ("unsynced_state", True)
    assert cause.where and cause.where.split(":")[0].endswith("ddp_faults.py")
    assert not _check(r, "replicas agree").passed


def test_parameter_without_gradient_changed_locally(audits):
    r = audits["param"]
    first = r.replicas.first
    assert (first.step, first.tensor, first.rank, r.replicas.kind) == (0, "1.scale", 1, "parameter")
    assert [c.source for c in r.causes] == ["unsynced_state"]
    assert r.replicas.grid[1].ranks == ["agree", "params"]


def test_per_rank_unseeded_dropout_reaching_the_weights(audits):
    r = audits["dropout"]
    assert r.verdict == "nondeterministic" and r.first_divergence.rank in (0, 1)
    assert r.replicas.first.tensor == "0.weight" and r.replicas.first.step == 0
    sources = [c.source for c in r.causes]
    assert "unseeded_rng" in sources and "unsynced_state" in sources
    unsynced = next(c for c in r.causes if c.source == "unsynced_state")
    assert unsynced.where == f"ddp_faults.py:{_line('self.gen.seed()')}"
    assert not _check(r, "runs agree on every rank").passed


def test_crashing_rank_leaves_no_process_behind(audits):
    r = audits["crash"]
    assert r.error and any(i.status == "crashed" for i in r.run_info)
    assert "rank 1" in r.error
    children = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            children.append(pid)
    assert children == []


def test_the_audits_loop_tells_a_plain_loaders_sampler_its_epoch(audits):
    """Target mode: the loop is the audit's, so it calls set_epoch on each new pass (as
    Lightning's loop does); a clean target with a plain DataLoader passes through the CLI.
    6 steps of 4 per epoch: the second pass draws another order."""
    code, out = audits["cli"], audits["cli_out"]
    data = json.loads((out / "determinism.json").read_text())
    assert code == 0
    assert (data["verdict"], data["nproc"], data["replicas"]["verdict"]) == (
        "deterministic", 2, "consistent")
    assert [c["source"] for c in data["causes"]] == []
    assert "Ranks" in (out / "determinism.html").read_text()


def test_set_sampler_epoch_reaches_every_sampler_a_loader_holds():
    data = TensorDataset(torch.arange(16.0))
    plain = DataLoader(data, batch_size=4,
                       sampler=DistributedSampler(data, num_replicas=2, rank=0, shuffle=True))
    batched = DataLoader(data, batch_sampler=BatchSampler(
        DistributedSampler(data, num_replicas=2, rank=1, shuffle=True), 4, False))
    for loader, sampler in ((plain, plain.sampler), (batched, batched.batch_sampler.sampler)):
        epochs = [sampler.epoch for _ in cycle_batches(loader, 6)]
        assert epochs == [0, 0, 1, 1, 2, 2]  # 2 batches a pass: a new epoch each pass
    resumed = [plain.sampler.epoch for _ in cycle_batches(plain, 6, start=3)]
    assert resumed == [1, 2, 2]  # a resumed loop starts in the pass step 3 falls in


# ------------------------------------------------------------------ hand-made traces


def _trace(params, buffers=None, steps=2):
    records = [{"type": "params", "names": ["module.w", "module.b"]},
               {"type": "dist", "buffers": ["bn.mean"], "broadcast_buffers": True},
               {"type": "init", "params": ["1", "2"]}]
    for s in range(steps):
        records.append({"type": "step", "step": s, "inputs": str(s), "targets": "t",
                        "loss": "l", "grads": ["g", None], "params": params(s), "rng": {}})
        records.append({"type": "replica", "step": s, "buffers": (buffers or (lambda s: ["m"]))(s)})
    return records


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2), st.integers(0, 1), st.booleans())
def test_replica_parting_names_the_first_step_tensor_and_rank(step, index, buffer):
    def parted(s):
        return ["p", "q"] if s < step or buffer else (["x", "q"] if index == 0 else ["p", "x"])

    def parted_buffers(s):
        return ["n"] if buffer and s >= step else ["m"]

    traces = [_trace(lambda s: ["p", "q"], steps=3),
              _trace(parted, parted_buffers if buffer else None, steps=3)]
    found = replica_parting(traces)
    want = ("bn.mean", "buffer") if buffer else (["w", "b"][index], "parameter")
    assert (found.first.step, found.first.tensor, found.kind, found.first.rank) == (step, *want, 1)
    assert found.grid[step + 1].ranks == ["agree", "buffers" if buffer else "params"]


@given(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=5))
def test_sampler_replay_needs_a_repeated_order(orders):
    sampler = {"where": "t.py:1", "shuffle": True,
               "passes": [{"epoch": 0, "order": o} for o in orders]}
    found = sampler_causes([[{"type": "samplers", "samplers": [sampler]}]])
    assert bool(found) == (len(set(orders)) < len(orders))


def test_merged_traces_part_where_one_rank_does():
    same = merge([_trace(lambda s: ["p", "q"]), _trace(lambda s: ["p", "q"])])
    other = merge([_trace(lambda s: ["p", "q"]), _trace(lambda s: ["p", "x"] if s else ["p", "q"])])
    assert first_parting(same, same) is None
    parting = first_parting(same, other)
    assert (parting.step, parting.stage, parting.tensor) == (1, "optimizer", "b")
    assert [strip_name(n) for n in ("", "module", "module.fc", "module#0")] == [None, "", "fc", "#0"]


def test_a_failed_rank_gets_its_hanging_peers_killed(monkeypatch, tmp_path):
    import os
    import sys
    import time

    from audit.probes.run import rank_launch
    from audit.probes.run.processes import Run

    monkeypatch.setattr(rank_launch, "GRACE_SECONDS", 0.2)

    def run(code: str, name: str) -> Run:
        return Run([sys.executable, "-c", code], str(tmp_path / f"{name}.log"),
                   str(tmp_path / f"{name}.trace"), dict(os.environ))

    hang, fail = run("import time; time.sleep(120)", "hang"), run("import sys; sys.exit(4)", "fail")
    group = rank_launch.RankGroup([hang, fail])
    deadline = time.monotonic() + 60
    code = group.poll()
    while code is None and time.monotonic() < deadline:
        time.sleep(0.05)
        code = group.poll()
    assert code == 4 and group.first_failed == 1
    assert hang.poll() is not None and fail.poll() == 4
    env = rank_launch.rank_env([], 1, 2, 29500)
    assert {k: env[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
                                "TORCHELASTIC_USE_AGENT_STORE")} == {
        "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29500", "TORCHELASTIC_USE_AGENT_STORE": "True"}  # the audit hosts the store
