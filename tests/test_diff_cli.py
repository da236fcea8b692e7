"""``audit record`` and ``audit diff`` on the command line: one-line errors (exit 2) before any
run, ``[tool.audit.diff]``, and one record + diff round trip with its report files."""
import json
import os

import pytest

from audit import config, registry
from audit.cli import main
from audit.probes.diff import reference

TARGET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "targets", "diff_pairs.py") + ":build"


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'p'\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def one_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("argv,needle", [
    (["diff", "--against", "missing.audit"], "no such reference file"),
    (["diff", "--against", "corrupt.audit"], "not JSON"),
    (["diff", "--against", "foreign.audit"], "not an audit reference"),
    (["diff", "--against", "newer.audit"], "newer audit"),
    (["diff", "a.py:build"], "give two targets"),
    (["diff", "--", "python", "train.py"], "--against"),
    (["diff", "a.py:build", "b.py:build", "--against", "corrupt.audit"], "one TARGET"),
    (["record", "--out", "folder"], "is a folder"),
    (["record", "--out", "train.py/base.audit"], "train.py"),  # under a regular file: no run
    (["record", "--out", "train.py/refs/base.audit"], "train.py"),
])
def test_bad_input_is_one_line_and_exit_2(project, capsys, argv, needle):
    (project / "corrupt.audit").write_text('{"schema": "audit.reference/1", "rec')
    (project / "foreign.audit").write_text(json.dumps({"schema": "audit.determinism/1"}))
    (project / "newer.audit").write_text(json.dumps({"schema": "audit.reference/7", "records": []}))
    (project / "train.py").write_text("print('hi')\n")
    (project / "folder").mkdir()
    assert main(argv) == 2
    line = one_line(capsys.readouterr().err)
    assert needle in line and (argv[0] != "record" or line.startswith("audit record: ")), line
    assert not (project / "audit-report" / "record.json").exists()


def test_the_config_table_takes_against_relative_to_the_pyproject(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.audit.diff]\nagainst = "refs/base.audit"\nsteps = 4\n')
    cfg = config.load(registry.tables(), str(tmp_path / "pyproject.toml"))
    table = cfg.section("diff")
    assert table["against"] == os.path.join(str(tmp_path), "refs", "base.audit")
    (tmp_path / "pyproject.toml").write_text("[tool.audit.diff]\nagainst = 3\n")
    with pytest.raises(config.ConfigError, match="against"):
        config.load(registry.tables(), str(tmp_path / "pyproject.toml"))


def test_record_then_diff_against_it(project, capsys):
    assert main(["record", TARGET, "--steps", "2", "--out", "base.audit"]) == 0
    assert "base.audit" in capsys.readouterr().out
    assert (project / "audit-report" / "record.json").exists()
    code = main(["diff", f"{TARGET},variant='rename'", "--against", "base.audit", "--out", "rep",
                 "--junit-xml", "rep/junit.xml"])
    out = capsys.readouterr().out
    assert code == 0, out
    data = json.loads((project / "rep" / "diff.json").read_text())
    assert data["schema"] == "audit.diff/1" and data["verdict"] == "identical" and data["steps"] == 2
    assert {"from": "head", "to": "classifier"} in data["renamed"]
    assert (project / "rep" / "diff.html").read_text().startswith("<!DOCTYPE html>")
    assert "numbers identical" in (project / "rep" / "junit.xml").read_text()


def test_the_same_code_in_another_environment_names_the_environment(project, monkeypatch, capsys):
    """Recorded with OMP_NUM_THREADS=1, checked with 2: every recorded key that moved is listed
    (the thread count and the variable), the code is the same on both sides, and the report
    says the environment is the likely reason; the same environment again is identical."""
    target = os.path.join(os.path.dirname(TARGET), "threads_chunked.py") + ":build"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    assert main(["record", target, "--steps", "2", "--out", "one.audit"]) == 0
    recorded = reference.load(str(project / "one.audit")).environment
    assert recorded["threads"] == 1
    assert (recorded["flags"]["OMP_NUM_THREADS"], recorded["flags"]["MKL_NUM_THREADS"]) == ("1", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.delenv("MKL_NUM_THREADS")
    assert main(["diff", target, "--against", "one.audit", "--out", "two"]) == 1
    data = json.loads((project / "two" / "diff.json").read_text())
    assert data["verdict"] == "differs" and data["first_difference"]["step"] == 0
    assert data["first_difference"]["module"] == "2"  # ChunkedSum
    changes = {c["key"]: (c["a"], c["b"]) for c in data["environment_changes"]}
    assert changes["threads"] == (1, 2)
    assert changes["flags.OMP_NUM_THREADS"] == ("1", "2")
    assert changes["flags.MKL_NUM_THREADS"] == ("1", None)
    assert data["a"]["code"] == data["b"]["code"] is not None
    assert (data["same_code"], data["likely_reason"]) == (True, "environment")
    page = (project / "two" / "diff.html").read_text()
    assert 'id="likely-reason"' in page
    assert "flags.OMP_NUM_THREADS" in (project / "two" / "summary.md").read_text()
    capsys.readouterr()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    assert main(["diff", target, "--against", "one.audit", "--out", "again"]) == 0
    again = json.loads((project / "again" / "diff.json").read_text())
    assert again["environment_changes"] == []
    assert (again["same_code"], again["likely_reason"]) == (True, None)
