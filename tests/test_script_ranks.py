"""Script mode over ranks on CPU with gloo: unmodified DDP scripts (tests/scripts/) under
``torchrun`` and ``--nproc 2`` (ddp_torchrun.py: clean, then a per-rank buffer without broadcast
and a sampler never told the epoch) and under ``torch.multiprocessing.spawn`` (ddp_spawn.py,
which writes a fixed MASTER_PORT: its two runs side by side must not collide). Three audits of
2 runs x 2 ranks run once per module, side by side; then the launcher command's parsing and
its one-line refusals, which start no run."""
import json
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audit import cli
from audit.kinds.determinism import checks
from audit.probes.script import torchrun as script_launch
from audit.probes.run.launcher import RunOptions
from audit.probes.determinism.script_launcher import (RankFiles, audit_script, first_failed,
                                                      rank_outcome)
from audit.probes.errors import UsageError
from audit.probes.script.ranks import local_url
from audit.probes.run.trace import read_trace

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.join(HERE, "scripts")
TORCHRUN = os.path.join(SCRIPTS, "ddp_torchrun.py")
STEPS = 3  # 16 samples, 2 ranks, batches of 4: two steps an epoch, so 3 steps see 2 epochs


def _line(marker: str) -> int:
    with open(TORCHRUN, encoding="utf-8") as fh:
        return next(i for i, line in enumerate(fh, 1) if marker in line)


def _direct(script: list, nproc: int, keep: str):
    opts = RunOptions(script=script, steps=STEPS, runs=2, jobs=2, cwd=SCRIPTS,
                              attribute=False, stdin=b"")
    return audit_script(opts, nproc, keep=keep)


def _cli(out: str) -> int:
    return cli.main(["determinism", "--steps", str(STEPS), "--jobs", "2", "--no-attribution",
                     "--quiet", "--out", out, "--", "torchrun", "--nproc_per_node", "2",
                     "ddp_torchrun.py"])


@pytest.fixture(scope="module")
def audits(tmp_path_factory):
    base = tmp_path_factory.mktemp("script-ranks")
    old = os.getcwd()
    os.chdir(SCRIPTS)
    try:
        with ThreadPoolExecutor(max_workers=3) as pool:
            clean = pool.submit(_cli, str(base / "clean"))
            faults = pool.submit(_direct, ["python", "ddp_torchrun.py", "--fault", "buffer",
                                           "--fault", "epoch"], 2, str(base / "faults"))
            spawn = pool.submit(_direct, ["python", "ddp_spawn.py"], 1, str(base / "spawn"))
            found = {"clean": clean.result(), "faults": faults.result(), "spawn": spawn.result()}
    finally:
        os.chdir(old)
    found["base"] = base
    return found


def _rank_traces(folder, run: str) -> list:
    paths = sorted(p for p in os.listdir(folder) if f"-{run}." in p and ".rank" in p
                   and (p.endswith(".trace") or ".trace.rank" in p))
    return [read_trace(os.path.join(folder, p)) for p in paths]


def test_clean_torchrun_script_passes(audits):
    assert audits["clean"] == 0
    data = json.loads((audits["base"] / "clean" / "determinism.json").read_text())
    assert (data["verdict"], data["nproc"], data["mode"]) == ("deterministic", 2, "script")
    assert data["target"] == "torchrun --nproc_per_node 2 ddp_torchrun.py"
    assert data["replicas"]["verdict"] == "consistent"
    assert [t["rank"] for t in data["rank_timelines"]] == [0, 1]
    assert data["causes"] == [] and [r["status"] for r in data["run_info"]] == ["ok", "ok"]


def test_planted_faults_caught_with_rank_and_place(audits):
    r = audits["faults"]
    first = r.replicas.first
    assert (r.verdict, r.nproc, r.replicas.verdict) == ("deterministic", 2, "diverged")
    assert (first.step, first.tensor, first.rank, r.replicas.kind) == (1, "norm.mean", 1, "buffer")
    by_source = {c.source: c for c in r.causes}
    assert set(by_source) == {"unsynced_state", "sampler_epoch"}
    assert by_source["unsynced_state"].where.startswith("ddp_torchrun.py:")
    assert by_source["sampler_epoch"].where == f"ddp_torchrun.py:{_line('sampler = DistributedSampler')}"
    failed = {c.name for c in checks(r) if not c.passed}
    assert failed == {"replicas agree", "sampler reshuffles per epoch"}


def test_ranks_are_named_without_the_ddp_prefix(audits):
    traces = _rank_traces(audits["base"] / "faults", "run0")
    assert len(traces) == 2
    for rank, records in enumerate(traces):
        names = next(r for r in records if r["type"] == "params")["names"]
        dist = next(r for r in records if r["type"] == "dist")
        assert names == ["net1.weight", "net1.bias", "net2.weight", "net2.bias"]
        assert (dist["rank"], dist["world"], dist["broadcast_buffers"]) == (rank, 2, False)


def test_spawned_ranks_are_traced(audits):
    r = audits["spawn"]
    assert (r.verdict, r.nproc, r.error) == ("deterministic", 2, None)
    assert r.replicas.verdict == "consistent" and len(r.replicas.grid) == STEPS + 1
    assert [t.rank for t in r.rank_timelines] == [0, 1]
    assert all([row.step for row in t.rows] == [None, *range(STEPS)] for t in r.rank_timelines)
    assert "different torch RNG states" in r.detail["rank_rng"]
    traces = _rank_traces(audits["base"] / "spawn", "run1")
    assert len(traces) == 2
    for records in traces:
        assert sum(1 for x in records if x["type"] == "step") == STEPS
        assert next(x for x in records if x["type"] == "end")["status"] == "ok"


# ------------------------------------------------------------------ the launcher command


@given(st.sampled_from(["--nproc_per_node", "--nproc-per-node"]), st.booleans(),
       st.integers(1, 8), st.booleans())
def test_launcher_commands_read_as_ranks_and_a_python_command(flag, joined, n, module):
    size = [f"{flag}={n}"] if joined else [flag, str(n)]
    head = ["-m", "pkg.train"] if module else ["train.py"]
    for launcher in (["torchrun"], ["python", "-u", "-m", "torch.distributed.run"]):
        found = script_launch.parse([*launcher, "--standalone", *size, "--nnodes", "1",
                                     *head, "--lr", "0.1"])
        options = ["-u"] if launcher[0] == "python" else []
        assert (found.nproc, found.python) == (n, ["python", *options, *head, "--lr", "0.1"])
    assert script_launch.python_command(["torchrun", *size, "train.py"], 1) == (n, ["python", "train.py"])


@pytest.mark.parametrize("options", [
    ["--nnodes", "2"], ["--max-restarts=3"], ["--tee", "3"], ["--no-python"], ["--frobnicate"],
    ["--nproc_per_node", "auto"], ["--master_addr", "10.0.0.2"],
])
def test_unsupported_launcher_options_are_one_line_before_any_run(options, tmp_path, capsys,
                                                                   monkeypatch):
    monkeypatch.chdir(SCRIPTS)
    code = cli.main(["determinism", "--out", str(tmp_path / "out"), "--", "torchrun",
                     *options, "ddp_torchrun.py"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "torchrun" in err, err
    assert not (tmp_path / "out" / "determinism.json").exists()


@pytest.mark.parametrize("kind, argv", [
    ("determinism", ["--nproc", "3", "--", "torchrun", "--nproc_per_node", "2", "ddp_torchrun.py"]),
    ("init", ["--", "torchrun", "--nproc_per_node", "2", "ddp_torchrun.py"]),
])
def test_a_refused_launch_names_the_audit_that_was_run(kind, argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(SCRIPTS)
    code = cli.main([kind, "--out", str(tmp_path / "out"), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith(f"audit {kind}: "), err


def test_launchers_refused_where_they_cannot_run(tmp_path):
    with pytest.raises(UsageError, match="disagree"):
        script_launch.python_command(["torchrun", "--nproc_per_node", "2", "t.py"], 3)
    with pytest.raises(UsageError, match="deprecated"):
        script_launch.parse(["python", "-m", "torch.distributed.launch", "t.py"])
    with pytest.raises(UsageError, match="only `audit determinism`"):
        script_launch.validate(["torchrun", "--nproc_per_node", "2", "ddp_torchrun.py"],
                               SCRIPTS, launchers=False)
    with pytest.raises(UsageError, match="not found"):
        script_launch.validate(["torchrun", "--nproc_per_node", "2", "missing.py"], SCRIPTS)


@given(st.sampled_from(["localhost", "10.1.2.3", "[::1]"]), st.integers(1, 65535),
       st.integers(1024, 65535))
def test_rendezvous_moves_to_the_runs_store(host, asked, port):
    saved = dict(os.environ)
    try:
        assert local_url(f"tcp://{host}:{asked}?rank=1", str(port)) == f"tcp://127.0.0.1:{port}?rank=1"
        # the store at that address is the audit's: the rank joins it as a client
        assert (os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]) == ("127.0.0.1", str(port))
        assert os.environ["TORCHELASTIC_USE_AGENT_STORE"] == "True"
        assert local_url("file:///tmp/x", str(port)) == "file:///tmp/x"
        assert local_url(f"tcp://{host}:{asked}", None) == f"tcp://{host}:{asked}"
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_the_rank_that_failed_first_speaks_for_the_run(tmp_path):
    """A rank whose peer crashed fails too ("connection closed by peer"), later: the run is
    blamed on the rank whose failed trace ended first, whatever its number."""
    files = []
    for rank, status in enumerate(["crashed", "crashed", "ok"]):
        path = tmp_path / f"rank{rank}.trace"
        path.write_text(json.dumps({"type": "step", "step": 0}) + "\n"
                        + json.dumps({"type": "end", "status": status, "message": f"m{rank}"}) + "\n")
        os.utime(path, ns=(0, [3, 2, 1][rank] * 10**9))
        files.append(RankFiles(str(path), str(tmp_path / "none"), str(tmp_path / "none")))
    out = rank_outcome("run0", files, 4, 1.0, "")
    assert first_failed(files, out.ranks) == 1
    assert out.end["message"] == "rank 1: m1" and len(out.ranks) == 3
