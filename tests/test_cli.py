"""The command line as a user meets it: exit codes, one-line errors, reports on disk."""
import json
import os

import pytest

from audit.cli import main

TARGETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "targets")


@pytest.fixture
def project(tmp_path, monkeypatch):
    """An empty project folder (its own pyproject, so the repo's [tool.audit] stays out)."""
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'p'\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def one_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip() and not x.startswith("audit progress:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("argv,needle", [
    (["determinism", "nope.py:build"], "does not exist"),
    (["determinism", "nocolon"], "after a colon"),
    (["init", "--schemes", "kaiming_normal,bogus"], "bogus"),
    (["determinism", "--runs", "1"], "2 or more"),
    (["determinism", "--steps", "0"], "must be 1 or more"),
    (["determinism", "--frobnicate"], "unrecognized arguments"),
    (["init", "--", "python", "train.py"], "audit init: "),  # the command that was run
    (["determinism", "--", "python", "missing_script.py"], "missing_script.py"),
])
def test_bad_input_is_one_line_and_exit_2(project, capsys, argv, needle):
    assert main(argv) == 2
    assert needle in one_line(capsys.readouterr().err)


@pytest.mark.parametrize("argv", [
    ["diff", "--against", "missing.audit"],
    ["determinism", "nope.py:build"],
    ["resume", "nope.py:build"],
    ["record", "nope.py:build"],
])
def test_every_usage_error_names_the_command_that_was_run(project, capsys, argv):
    assert main(argv) == 2
    assert one_line(capsys.readouterr().err).startswith(f"audit {argv[0]}: ")


def test_a_target_that_raises_is_exit_2_in_one_line(project, capsys):
    (project / "t.py").write_text("def build():\n    raise ValueError('no data here')\n")
    assert main(["determinism", "t.py:build", "--steps", "1"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "ValueError: no data here" in line


def test_builtin_example_is_deterministic_and_reports(project, capsys):
    code = main(["determinism", "--steps", "3", "--out", "rep", "--junit-xml", "rep/junit.xml"])
    out = capsys.readouterr().out
    assert code == 0, out
    data = json.loads((project / "rep" / "determinism.json").read_text())
    assert data["verdict"] == "deterministic" and data["steps"] == 3 and data["runs"] == 2
    assert (project / "rep" / "determinism.html").read_text().startswith("<!DOCTYPE html>")
    assert "rep/determinism.html" in out
    assert "<testsuites" in (project / "rep" / "junit.xml").read_text()


def test_a_run_that_crashes_keeps_what_was_measured(project, capsys):
    code = main(["determinism", os.path.join(TARGETS, "crash_midway.py") + ":build",
                 "--steps", "4", "--out", "rep"])
    captured = capsys.readouterr()
    assert code == 2
    data = json.loads((project / "rep" / "determinism.json").read_text())
    assert "the loss blew up at step 2" in data["error"]
    assert [r["steps_completed"] for r in data["run_info"]] == [2, 2]
    assert {r["status"] for r in data["run_info"]} == {"crashed"}
    assert "crash_midway.py:12" in data["run_info"][0]["message"]
    assert (project / "rep" / "determinism.html").exists()
    assert "blew up" in captured.err


def test_flags_win_over_pyproject(project, capsys):
    (project / "pyproject.toml").write_text(
        "[tool.audit]\nseed = 3\n[tool.audit.init]\nsteps = 2\nschemes = ['default']\n")
    (project / "m.py").write_text(
        "from torch import nn\ndef build():\n    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))\n")
    assert main(["init", "m.py:build", "--steps", "1", "--out", "r"]) == 0
    data = json.loads((project / "r" / "init.json").read_text())
    assert data["seed"] == 3 and data["steps"] == 1
    assert [s["name"] for s in data["schemes"]] == ["default"]
