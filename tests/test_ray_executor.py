"""The executors: runs on a Ray cluster give what local runs give, wherever Ray puts them.

The slow tests share one local cluster (``ray.cluster_utils.Cluster``: a head and two worker
nodes, one CPU each, every one on this machine) and join it by its address, so the user's
code reaches the nodes through Ray's runtime environment as on a real cluster. The others need
no Ray: a missing Ray refused in one line, a job moved into a node's folder and its files sent
back, and what ``--across-nodes`` writes into ``determinism.json``.
"""
import json
import os
import shutil
import sys

import pytest

from audit.cli import main
from audit.probes.results import DeterminismResult
from audit.probes.results.records import Record
from audit.probes.run.executors import node
from audit.probes.run.executors.base import Job
from audit.probes.run.launcher import Outcome
from audit.reports.terminal import determinism_summary

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = os.path.join(HERE, "targets")


def one_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip() and not x.startswith("audit progress:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A small project folder with the variance targets (what a runtime env sends to nodes)."""
    for name in ("variance_targets.py", "common.py"):
        shutil.copy(os.path.join(TARGETS, name), tmp_path / name)
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'p'\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --------------------------------------------------------------------------- without Ray


@pytest.mark.parametrize("how", ["flag", "config"])
def test_a_missing_ray_is_refused_in_one_line_before_any_run(project, monkeypatch, capsys, how):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    argv = ["variance", "variance_targets.py:regression", "--seeds", "2", "--steps", "1"]
    if how == "flag":
        argv += ["--executor", "ray"]
    else:
        (project / "pyproject.toml").write_text("[tool.audit]\nexecutor = 'ray'\n")
    assert main(argv) == 2
    line = one_line(capsys.readouterr().err)
    assert "pip install 'audit[ray]'" in line
    assert not (project / "audit-report").exists()  # refused before the report folder


def test_across_nodes_needs_the_ray_executor(project, capsys):
    assert main(["determinism", "--across-nodes", "--steps", "1"]) == 2
    assert "--executor ray" in one_line(capsys.readouterr().err)


def test_a_bad_executor_in_the_config_names_the_key(project, capsys):
    (project / "pyproject.toml").write_text("[tool.audit]\nexecutor = 'slurm'\n")
    assert main(["variance", "--seeds", "2", "--steps", "1"]) == 2
    assert "executor" in one_line(capsys.readouterr().err)


CHILD = ("import json, sys\n"
         "spec = json.load(open(sys.argv[1]))\n"
         "open(spec['out'], 'w').write(json.dumps({'spec': spec['out'], 'stdin': sys.stdin.read()}))\n"
         "print('wrote', spec['out'])\n")


def test_a_job_runs_in_a_folder_of_its_node_and_its_files_come_back(tmp_path):
    """What the Ray task does on a node, here: the spec's paths moved into the node's folder,
    the child run there, its files back with the audit's paths in them."""
    work = tmp_path / "work"
    work.mkdir()
    spec = work / "0001.json"
    spec.write_text(json.dumps({"out": str(work / "0001.out.json")}))
    (work / "stdin").write_bytes(b"typed")
    job = Job([sys.executable, "-c", CHILD, str(spec)], dict(os.environ), str(work / "0001.log"),
              str(work), [str(spec)], cwd=str(tmp_path), stdin=str(work / "stdin"))
    got = node.run_here(node.pack(job, moved_cwd=False))
    assert got["exit_code"] == 0 and not got["stopped"]
    assert set(got["files"]) == {"0001.out.json", "0001.log"}  # not the inputs
    written = json.loads(got["files"]["0001.out.json"])
    assert written == {"spec": str(work / "0001.out.json"), "stdin": "typed"}
    assert str(work) in got["files"]["0001.log"].decode()  # the node's folder named as ours


def test_moving_a_job_keeps_paths_outside_its_folders():
    moves = {"/a/work": "/node/tmp", "/a/project": "/node/cwd"}
    data = {"trace": "/a/work/1.trace", "script": ["python", "/a/project/train.py", "/a/workers"],
            "n": 3}
    assert node.relocate(data, moves) == {
        "trace": "/node/tmp/1.trace", "script": ["python", "/node/cwd/train.py", "/a/workers"],
        "n": 3}


def _outcome(name: str, node_name: str, cpu: str, threads: int) -> Outcome:
    env = {"type": Record.ENV, "environment": {"cpu": cpu, "threads": threads, "torch": "2.5"}}
    return Outcome(name, [env], 0, 1.0, node=node_name)


def test_a_shipped_object_goes_to_the_node_with_its_runs_files(tmp_path):
    """A notebook's builder (pickled in the audit's own temp folder) reaches a node that shares
    no folder with the audit: carried into the work folder, named there by the moved spec."""
    from audit.probes.run import shipped, target

    width = 3

    def build():  # a closure, as a cell's builder over a notebook variable
        return width

    spec = shipped.ship(build, str(tmp_path / "api"))
    work, there = tmp_path / "work", tmp_path / "node"
    work.mkdir()
    moved, files = target.carry(spec, str(work))
    assert files == [target.parse_spec(moved).where] and files[0].startswith(str(work))
    assert target.label(moved) == target.label(spec) and target.carry("a.py:build", str(work)) == ("a.py:build", [])
    shutil.copytree(work, there)
    on_node = node.relocate(moved, {str(work): str(there)})
    shutil.rmtree(tmp_path / "api")
    shutil.rmtree(work)
    assert target.load_callable(on_node)() == 3


def test_across_nodes_names_the_nodes_and_how_they_differ_when_runs_part():
    from audit.probes.determinism.orchestrate import annotate_nodes

    outs = [_outcome("run0", "a/1", "Xeon", 2), _outcome("run1", "b/2", "EPYC", 2)]
    parted = DeterminismResult(verdict="nondeterministic", runs=2, steps=3, seed=0, device="cpu")
    annotate_nodes(parted, outs, True)
    doc = parted.to_dict()
    assert [(n["run"], n["node"]) for n in doc["nodes"]] == [(0, "a/1"), (1, "b/2")]
    assert doc["environment_changes"] == [{"key": "cpu", "a": "Xeon", "b": "EPYC"}]
    shown = determinism_summary(parted, width=100)
    assert "b/2" in shown and "EPYC" in shown  # the terminal names the nodes and the change
    agreed = DeterminismResult(verdict="deterministic", runs=2, steps=3, seed=0, device="cpu")
    annotate_nodes(agreed, outs, False)
    doc = agreed.to_dict()
    assert len(doc["nodes"]) == 2 and "environment_changes" not in doc
    assert "a/1" in doc["detail"]["nodes"] and "b/2" in doc["detail"]["nodes"]
    plain = DeterminismResult(verdict="deterministic", runs=2, steps=3, seed=0, device="cpu")
    assert "nodes" not in plain.to_dict()  # documents without --across-nodes keep their shape


# --------------------------------------------------------------------------- on a local cluster


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    small = {"num_cpus": 1, "object_store_memory": 80 * 2**20}
    made = Cluster(initialize_head=True, head_node_args={**small, "include_dashboard": False})
    try:
        for _ in range(2):
            made.add_node(**small)
        made.wait_for_nodes()
        yield made
    finally:
        ray.shutdown()
        made.shutdown()


def _compare(executor: str, address=None, nodes=None):
    from audit.probes.variance import engine
    from audit.probes.variance.compare import CompareOptions, audit_compare

    def runner(runs, pool_opts, on_done, stop):
        outs = engine.run_in_fresh_processes(runs, pool_opts, on_done, stop)
        if nodes is not None:
            nodes.extend(o.node for o in outs)
        return outs

    opts = CompareOptions("variance_targets.py:regression,lr=0.05",
                          "variance_targets.py:regression,lr=0.0", seeds=2, steps=3, jobs=3,
                          device="cpu", executor=executor, ray_address=address)
    return audit_compare(opts, runner=runner)


@pytest.mark.slow
def test_compare_on_ray_gives_the_local_numbers_from_several_nodes(cluster, project):
    nodes: list = []
    here, there = _compare("local"), _compare("ray", cluster.address, nodes)
    assert there.error is None and len(there.runs) == 4
    assert (there.a.values, there.b.values) == (here.a.values, here.b.values)
    assert there.verdict == here.verdict
    assert len(set(nodes)) > 1, nodes


@pytest.mark.slow
def test_across_nodes_runs_land_on_different_nodes(cluster, project, capsys):
    (project / "tiny.py").write_text(
        "from common import mlp, tiny_data\n\n"
        "def build():\n    return {'model': mlp(), 'data': tiny_data()}\n")
    code = main(["determinism", "tiny.py:build", "--steps", "2", "--device", "cpu",
                 "--executor", "ray", "--ray-address", cluster.address, "--across-nodes",
                 "--out", "rep"])
    assert code == 0, capsys.readouterr()
    doc = json.loads((project / "rep" / "determinism.json").read_text())
    assert doc["verdict"] == "deterministic"
    assert len({n["node"] for n in doc["nodes"]}) == 2
    assert all(n["environment"].get("torch") for n in doc["nodes"])


@pytest.mark.slow
def test_a_node_lost_mid_audit_still_gives_every_run(cluster, project):
    """Both worker nodes removed once the first run is in (three runs were out, one per
    node, so at least one was running on a removed node): the lost runs are retried on the
    head and the numbers are those of local runs. (The cluster gets its nodes back.)"""
    from audit.probes.variance.engine import VarianceOptions, audit_variance

    def variance(executor, progress=None):
        opts = VarianceOptions(target="variance_targets.py:full_batch", seeds=2, steps=2,
                               sources=("init",), jobs=3, device="cpu", executor=executor,
                               ray_address=cluster.address if executor == "ray" else None)
        return audit_variance(opts, progress)

    killed: list = []

    def kill_workers(event):
        if not killed:
            killed.extend(cluster.list_all_nodes()[1:])
            for lost in killed:
                cluster.remove_node(lost)

    try:
        there = variance("ray", kill_workers)
    finally:
        for _ in killed:
            cluster.add_node(num_cpus=1, object_store_memory=80 * 2**20)
    here = variance("local")
    assert killed and there.error is None
    assert [r.status for r in there.runs] == ["ok"] * 4
    assert [r.metrics for r in there.runs] == [r.metrics for r in here.runs]


def test_a_run_lost_with_its_node_is_a_killed_run_naming_the_node():
    """What the Ray executor makes of a task that failed every retry, and how variance
    reports it (the other runs are untouched: each run is its own outcome)."""
    ray = pytest.importorskip("ray")
    from audit.probes.run.executors.ray_cluster import RayExecutor
    from audit.probes.variance.engine import to_record
    from audit.probes.variance.runner import RunOutcome, RunSpec

    executor = object.__new__(RayExecutor)  # no cluster: only how a failure is read
    executor.ray = ray
    died = ray.exceptions.NodeDiedError("Task failed: node ID: 66bdac88b73cfa18 is dead")
    done = executor.lost(3, 0.0, died)
    assert (done.key, done.exit_code) == (3, None) and done.node.endswith("/66bdac88")
    assert "66bdac88" in done.lost
    unnamed = executor.lost(4, 0.0, ray.exceptions.WorkerCrashedError())
    assert unnamed.lost and unnamed.exit_code is None
    record = to_record(RunOutcome(RunSpec("init", 1, {}), -9, {}, "", done.node, done.lost))
    assert record.status == "killed" and "66bdac88" in record.message
