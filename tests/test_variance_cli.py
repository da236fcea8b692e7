"""``audit variance`` / ``audit compare`` as a user meets them: exit codes, one-line errors,
reports on disk, ``[tool.audit.variance|compare]`` in ``audit check``, the fixture, the API.

Only the empty-folder test starts fresh processes; the others run the worker in this process
(the pool's fresh processes are tested in ``test_variance.py``)."""
import json
import os

import pytest
from test_variance import TARGETS, in_process

import audit
from audit.cli import main
from audit.probes.variance import engine

LR0, LR5 = f"{TARGETS}:regression,lr=0.0", f"{TARGETS}:regression,lr=0.05"


@pytest.fixture
def project(tmp_path, monkeypatch):
    """An empty project folder (its own pyproject, so the repo's [tool.audit] stays out)."""
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'p'\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def here(monkeypatch):
    """Runs go through the worker in this process."""
    monkeypatch.setattr(engine, "run_in_fresh_processes", in_process)


def one_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip() and not x.startswith("audit progress:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_variance_in_an_empty_folder_runs_the_builtin_example(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["variance", "--seeds", "2", "--steps", "1", "--sources", "dropout",
                 "--jobs", "2", "--device", "cpu", "--out", "rep"])
    out = capsys.readouterr().out
    assert code == 0, out
    doc = json.loads((tmp_path / "rep" / "variance.json").read_text())
    assert doc["schema"] == "audit.variance/1" and doc["seeds"] == 2
    assert set(doc["metrics"]["loss"]["sources"]) == {"dropout", "all"}
    assert doc["controlled"] is True and not doc["error"]
    assert (tmp_path / "rep" / "variance.html").exists() and "audit variance" in out


def test_compare_worse_exits_1_with_a_failed_junit_check(project, here, capsys):
    code = main(["compare", LR5, LR0, "--seeds", "6", "--steps", "8", "--out", "rep",
                 "--junit-xml", "rep/junit.xml"])
    assert code == 1
    doc = json.loads((project / "rep" / "compare.json").read_text())
    assert doc["schema"] == "audit.compare/1" and doc["verdict"] == "worse"
    assert doc["p_value"] < 0.05 and doc["metric"] == "mse"
    junit = (project / "rep" / "junit.xml").read_text()
    assert 'name="candidate not worse"' in junit and "<failure" in junit
    assert (project / "rep" / "compare.html").exists()


def test_compare_better_exits_0(project, here, capsys):
    assert main(["compare", LR0, LR5, "--seeds", "6", "--steps", "8", "-q"]) == 0
    assert "better" in capsys.readouterr().out.lower()


@pytest.mark.parametrize("argv,needle", [
    (["compare", LR0], "needs two targets"),
    (["compare", LR0, LR5, "--seeds", "1"], "at least 2 seeds"),
    (["variance", "--sources", "init,weights"], "--sources"),
    (["variance", "--direction", "up"], "invalid choice"),
    (["compare", LR0, LR5, "--metric", "accuracy", "--seeds", "2", "--steps", "1"], "--metric accuracy"),
])
def test_bad_input_is_one_line_and_exit_2(project, here, capsys, argv, needle):
    assert main(argv) == 2
    assert needle in one_line(capsys.readouterr().err)


def test_check_runs_compare_from_pyproject_and_fails_when_worse(project, here, capsys):
    (project / "pyproject.toml").write_text(
        "[tool.audit]\naudits = ['compare']\n[tool.audit.compare]\n"
        f"baseline = '{LR5}'\ncandidate = '{LR0}'\nseeds = 6\nsteps = 8\n")
    assert main(["check", "--out", "rep"]) == 1
    assert json.loads((project / "rep" / "compare.json").read_text())["verdict"] == "worse"
    assert "candidate not worse" in (project / "rep" / "summary.md").read_text()


@pytest.mark.parametrize("table,needle", [
    ("[tool.audit.variance]\nseeds = 1\n", "seeds"),
    ("[tool.audit.variance]\nsources = ['weights']\n", "sources"),
    ("[tool.audit.compare]\ncandidate = 'nocolon'\n", "candidate"),
    ("[tool.audit.compare]\nalpha = 2\n", "alpha"),
])
def test_bad_tables_are_one_line_and_exit_2(project, capsys, table, needle):
    (project / "pyproject.toml").write_text(table)
    assert main(["variance"]) == 2
    assert needle in one_line(capsys.readouterr().err)


def test_baseline_snapshot_and_regression(project, here, capsys):
    base = str(project / "base.json")
    assert main(["compare", LR0, LR5, "--seeds", "6", "--steps", "8", "--baseline", base,
                 "--update-baseline", "-q"]) == 0
    assert main(["compare", LR5, LR0, "--seeds", "6", "--steps", "8", "--baseline", base, "-q"]) == 1
    assert "significantly worse" in capsys.readouterr().out


def test_fixture_and_api(compare_audit, here, tmp_path):
    result = compare_audit(LR0, candidate=LR5, seeds=6, steps=8)
    assert result.verdict == "better"
    assert compare_audit(LR5, candidate=LR0, seeds=6, steps=8, fail=False).verdict == "worse"
    v = audit.run("variance", f"{TARGETS}:full_batch", seeds=2, steps=2, device="cpu",
                  out=str(tmp_path))
    assert v.metrics["loss"].sources["dropout"].std == 0.0
    assert os.path.exists(tmp_path / "variance.html")
