"""``audit resume`` from the command line: exit codes, one-line errors, reports on disk,
``[tool.audit.resume]`` settings; a complete checkpoint passes, a load that raises is exit 2."""
import json
import os

import pytest

from audit.cli import main
from audit.probes.results.resume import ResumeResult

TARGETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "targets")


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'p'\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def one_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip() and not x.startswith("audit progress:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("argv,needle", [
    (["resume", "--steps", "4", "--at", "4"], "--at 4"),
    (["resume", "--at", "0"], "must be 1 or more"),
    (["resume", "nope.py:build"], "does not exist"),
    (["resume", "--", "python", "train.py"], "determinism"),
])
def test_bad_input_is_one_line_and_exit_2(project, capsys, argv, needle):
    assert main(argv) == 2
    assert needle in one_line(capsys.readouterr().err)


def test_bad_config_table_is_exit_2(project, capsys):
    (project / "pyproject.toml").write_text("[tool.audit.resume]\nat = 'five'\n")
    assert main(["resume"]) == 2
    assert "tool.audit.resume" in one_line(capsys.readouterr().err)


def test_a_load_that_raises_is_exit_2_in_one_line(project, capsys):
    assert main(["resume", os.path.join(TARGETS, "resume_bad_load.py") + ":build"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "load raised KeyError" in line and "optimizer" in line


def test_complete_checkpoint_passes_and_reports(project, capsys):
    (project / "pyproject.toml").write_text("[tool.audit.resume]\nsteps = 10\nat = 6\n")
    target = os.path.join(TARGETS, "resume_complete.py") + ":build"
    code = main(["resume", target, "--out", "rep", "--junit-xml", "rep/junit.xml"])
    out = capsys.readouterr().out
    assert code == 0, out
    data = json.loads((project / "rep" / "resume.json").read_text())
    assert (data["schema"], data["verdict"], data["steps"], data["at"]) == ("audit.resume/1", "equivalent", 10, 6)
    assert (project / "rep" / "resume.html").read_text().startswith("<!DOCTYPE html>")
    junit = (project / "rep" / "junit.xml").read_text()
    assert 'failures="0"' in junit and "resume reproduces the run" in junit
    r = ResumeResult.from_dict(data)
    assert (r.first_divergence, r.causes, r.state_differences) == (None, [], [])
    assert r.checkpoint == "target" and r.passed
    assert len(r.run_info) == 2  # a passing audit costs two processes: A and C
    after = [row for row in r.timeline if row.step >= r.at]
    assert after[0].stages["state"] == "agree"
    assert all(v == "agree" for row in after for v in row.stages.values())
    assert all(row.loss_a == row.loss_c for row in after)
