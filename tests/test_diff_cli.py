"""``audit record`` and ``audit diff`` on the command line: one-line errors (exit 2) before any
run, ``[tool.audit.diff]``, and one record + diff round trip with its report files."""
import json
import os

import pytest

from audit import config, registry
from audit.cli import main

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
