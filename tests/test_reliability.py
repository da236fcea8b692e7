"""Reliability of the real CLI, each case in a subprocess: hangs, interrupts, early validation,
non-finite losses, runs that exit, a shared report folder, target errors, progress."""
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audit.cli import build_parser
from audit.probes.errors import UsageError
from audit.probes.progress import Progress
from audit.gate.progress import PREFIX, ProgressDisplay

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = os.path.join(HERE, "targets")


def target(name: str) -> str:
    return os.path.join(TARGETS, name)


def line_of(name: str, marker: str) -> int:
    with open(target(name), encoding="utf-8") as fh:
        return next(i for i, line in enumerate(fh, 1) if marker in line)


@pytest.fixture
def project(tmp_path):
    """A project folder (its own pyproject, so the repo's [tool.audit] stays out) and the
    temporary folder the audit's runs use (it must be empty once the audit ends)."""
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'p'\n")
    (tmp_path / "tmp").mkdir()
    return tmp_path


def environment(project) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(project / "tmp"))
    env.pop("GITHUB_ACTIONS", None)
    env.pop("GITHUB_STEP_SUMMARY", None)
    return env


def audit_cmd(args: list) -> list:
    return [sys.executable, "-m", "audit", *args]


def run_audit(project, args: list) -> subprocess.CompletedProcess:
    return subprocess.run(audit_cmd(args), cwd=project, env=environment(project), text=True,
                          capture_output=True, timeout=300)


def problem_lines(err: str) -> list:
    """stderr without the progress lines and blank lines."""
    return [x for x in err.splitlines() if x.strip() and not x.startswith(PREFIX)]


def one_problem(err: str) -> str:
    lines = problem_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def no_temp_left(project) -> None:
    """Nothing of the audit's or its runs' (multiprocessing's pymp-*) is left; torch's own
    cache of compiled kernels, made by importing torch in the CLI process, may stay."""
    left = [p.name for p in (project / "tmp").iterdir() if not p.name.startswith("torchinductor")]
    assert left == []


def processes() -> list:
    """(pid, parent pid, process group, state) of every process."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out.append((int(name), int(fields[1]), int(fields[2]), fields[0]))
    return out


def alive_in(groups: set) -> list:
    return [p for p in processes() if p[2] in groups and p[3] != "Z"]


def wait_for(predicate, what: str, limit: float = 240.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def traced_steps(project) -> int:
    steps = 0
    for folder in (project / "tmp").glob("audit-determinism-*"):
        for trace in folder.glob("*-run*.trace"):
            steps += trace.read_text(errors="replace").count('{"type":"step"')
    return steps


# ------------------------------------------------------------------------------ 1. hangs


def test_a_run_that_hangs_is_ended_and_the_report_says_where(project):
    r = run_audit(project, ["determinism", target("hangs_in_build.py") + ":build", "--timeout", "3",
                            "--steps", "2", "--jobs", "2", "--out", "rep"])
    assert r.returncode == 2, r.stderr
    where = f"hangs_in_build.py:{line_of('hangs_in_build.py', 'STUCK HERE')}"
    line = one_problem(r.stderr)
    assert "run 0 timed out" in line and "while loading the target" in line and where in line
    doc = json.loads((project / "rep" / "determinism.json").read_text())
    assert {run["status"] for run in doc["run_info"]} == {"timed_out"}
    assert "wait_for_data" in doc["run_info"][0]["stack"]
    assert "hangs_in_build.py" in (project / "rep" / "determinism.html").read_text()
    no_temp_left(project)


def test_init_that_hangs_is_one_line_with_the_place(project):
    r = run_audit(project, ["init", target("hangs_in_build.py") + ":build", "--timeout", "2",
                            "--out", "rep"])
    assert r.returncode == 2
    line = one_problem(r.stderr)
    where = f"hangs_in_build.py:{line_of('hangs_in_build.py', 'STUCK HERE')}"
    assert "timed out" in line and "loading the target" in line and where in line


# ------------------------------------------------------------------------------ 2. interrupts
# and 6. a second audit on the same report folder


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_ends_every_run_and_keeps_the_partial_report(project, sig):
    proc = subprocess.Popen(audit_cmd(["determinism", target("slow_steps.py") + ":build",
                                       "--steps", "40", "--jobs", "2", "--out", "rep"]),
                            cwd=project, env=environment(project), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: traced_steps(project) >= 2, "a traced step")
        groups = {p[2] for p in processes() if p[1] == proc.pid}
        assert groups and proc.pid not in groups  # each run in a process group of its own
        assert len(alive_in(groups)) > len(groups)  # the DataLoader workers are in them too
        if sig == signal.SIGTERM:
            other = run_audit(project, ["determinism", "--steps", "1", "--out", "rep"])
            assert other.returncode == 2
            assert "another audit" in one_problem(other.stderr)
        proc.send_signal(sig)
        if sig == signal.SIGINT:
            time.sleep(0.05)
            proc.send_signal(sig)  # a second Ctrl-C while it cleans up
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig, err
    line = one_problem(err)
    assert f"stopped by {signal.Signals(sig).name}" in line and "partial report" in line
    assert wait_for(lambda: not alive_in(groups), "the runs' processes to end", 10)
    doc = json.loads((project / "rep" / "determinism.json").read_text())
    assert f"interrupted by {signal.Signals(sig).name}" in doc["error"]
    assert {run["status"] for run in doc["run_info"]} == {"interrupted"}
    assert max(run["steps_completed"] for run in doc["run_info"]) >= 1
    assert (project / "rep" / "determinism.html").exists()
    assert not (project / "rep" / ".audit.lock").exists()
    no_temp_left(project)


# ------------------------------------------------------------------------------ 3. validation


BAD_BASELINE = {"schema": "audit.baseline/1", "determinism": {"verdict": "deterministic",
                                                              "rng_escapes": [{"kind": 3}]}}


@pytest.mark.parametrize("args, needle", [
    (["determinism", "--seed", "-1"], "from 0 to 4294967295"),
    (["init", "--seed", str(2**32)], "from 0 to 4294967295"),
    (["init", "--input-shape", "3,x"], "not a list of sizes"),
    (["init", "--input-shape", "x3"], "not a list of sizes"),
    (["init", "--input-shape", "3,,x,,32"], "not a list of sizes"),
    (["determinism", "--runs", "0"], "must be 2 or more"),
    (["determinism", "--runs", "1"], "must be 2 or more"),
    (["determinism", "--out", "a_file"], "is a file, not a folder"),
    (["init", "--out", "a_file/reports"], "cannot be created"),
    (["determinism", "missing.py:build"], "does not exist"),
    (["determinism", "no_such_module_xyz:build"], "cannot import module"),
    (["determinism", target("tiny.py") + ":biuld"], "has no 'biuld'"),
    (["determinism", "--baseline", "bad-baseline.json"], "rng_escapes"),
    (["determinism", "--timeout", "0"], "positive number of seconds"),
])
def test_bad_input_is_refused_before_any_run(project, args, needle):
    (project / "a_file").write_text("not a folder\n")
    (project / "bad-baseline.json").write_text(json.dumps(BAD_BASELINE))
    r = run_audit(project, args)
    assert r.returncode == 2
    assert needle in one_problem(r.stderr)
    assert not (project / "audit-report").exists() and not r.stdout.strip()
    no_temp_left(project)


# ------------------------------------------------------------------------------ 7. target errors


def test_errors_building_or_loading_the_target_name_the_line(project):
    r = run_audit(project, ["init", target("build_fails.py") + ":build", "--out", "rep"])
    assert r.returncode == 2
    line = one_problem(r.stderr)
    assert "FileNotFoundError" in line and f"build_fails.py:{line_of('build_fails.py', 'FAILS HERE')}" in line
    r = run_audit(project, ["determinism", target("syntax_error.py") + ":build", "--out", "rep"])
    assert r.returncode == 2
    assert "SyntaxError" in one_problem(r.stderr) and "syntax_error.py:5" in r.stderr
    no_temp_left(project)


# ------------------------------------------------------------------------------ 4, 5, 8


def test_a_nan_loss_is_reported_whatever_the_verdict(project):
    r = run_audit(project, ["determinism", target("nan_loss.py") + ":build", "--steps", "4",
                            "--jobs", "2", "--out", "rep", "--junit-xml", "rep/junit.xml"])
    assert r.returncode == 1, r.stderr
    doc = json.loads((project / "rep" / "determinism.json").read_text())
    assert doc["verdict"] == "deterministic"
    assert doc["nonfinite"] == {"run": 0, "step": 2, "what": "loss", "value": "nan"}
    assert 'id="nonfinite"' in (project / "rep" / "determinism.html").read_text()
    assert "Non-finite values" in r.stdout
    junit = (project / "rep" / "junit.xml").read_text()
    assert 'name="finite loss and gradients"' in junit and "the loss became NaN at step 2" in junit
    # 8: without a terminal, one line per phase on stderr
    assert [x for x in r.stderr.splitlines() if x.startswith(PREFIX)][0].startswith(
        f"{PREFIX} runs (2 x 4 steps) at ")
    no_temp_left(project)


def test_a_run_that_exits_midway_is_one_line(project):
    r = run_audit(project, ["determinism", target("exits_midway.py") + ":build", "--steps", "4",
                            "--jobs", "2", "--out", "rep"])
    assert r.returncode == 2
    line = one_problem(r.stderr)
    assert "run 0" in line and "exited with status 0 in step 2" in line
    doc = json.loads((project / "rep" / "determinism.json").read_text())
    assert [(x["status"], x["exit_code"], x["steps_completed"]) for x in doc["run_info"]] == \
        [("exited", 0, 2)] * 2
    no_temp_left(project)


def test_unwritable_reports_keep_the_verdict_and_init_shows_each_scheme(project):
    (project / "rep" / "init.html").mkdir(parents=True)
    (project / "rep" / "init.html" / "keep").write_text("x")  # a folder where a file must go
    r = run_audit(project, ["init", target("tiny.py") + ":build", "--schemes",
                            "default,kaiming_normal", "--steps", "1", "--out", "rep"])
    assert r.returncode == 2
    assert "audit init: PASS" in r.stdout
    assert "could not be written" in one_problem(r.stderr)
    phases = [x for x in r.stderr.splitlines() if x.startswith(PREFIX)]
    assert [p.split(" at ")[0] for p in phases] == [
        f"{PREFIX} scheme default (1 of 2)", f"{PREFIX} scheme kaiming_normal (2 of 2)"]


def test_on_a_terminal_progress_is_a_live_bar():
    stream = io.StringIO()
    show = ProgressDisplay(stream=stream, tty=True)
    show(Progress("runs (2 x 3 steps)", 0, 6))
    show(Progress("runs (2 x 3 steps)", 4, 6))
    show(Progress("replaying to localize", 1, 6))
    show.close()
    text = stream.getvalue()
    assert "audit: runs (2 x 3 steps)" in text and "4/6" in text and "replaying to localize" in text
    assert PREFIX not in text


# ------------------------------------------------------------------------------ in-process pieces


def input_shape(text: str) -> list:
    return build_parser().parse_args(["init", "--input-shape", text]).input_shape


@given(st.lists(st.integers(1, 10**6), min_size=1, max_size=5), st.sampled_from([",", "x", ", "]))
def test_input_shapes_read_back_exactly(sizes, sep):
    assert input_shape(sep.join(map(str, sizes))) == sizes


@given(st.text(alphabet="0123456789,x -+.a", min_size=1, max_size=12))
def test_an_input_shape_is_sizes_and_separators_only(text):
    compact = "".join(text.split())
    parts = compact.replace("x", ",").split(",")
    valid = bool(compact) and all(p.isdigit() and int(p) > 0 for p in parts)
    if text.startswith("-"):
        text = " " + text  # an argument, not an option, for argparse
    try:
        assert input_shape(text) == [int(p) for p in parts] and valid
    except UsageError:
        assert not valid


def test_an_interrupted_init_keeps_the_schemes_that_finished():
    from audit.probes.init.engine import run_init
    from audit.probes.run.processes import Interrupted
    from audit.probes.run.training import TrainingSetup, synthetic_batches
    from torch import nn

    def progress(event):
        if event.phase.startswith("scheme kaiming_normal"):
            raise Interrupted(signal.SIGTERM)

    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    setup = TrainingSetup(model=model, data=synthetic_batches((6,), 3, 8, 2, 0))
    with pytest.raises(Interrupted) as caught:
        run_init(setup, schemes=["default", "kaiming_normal", "lsuv"], steps=2, progress=progress)
    partial = caught.value.partial
    assert [s.name for s in partial.schemes] == ["default"]
    assert "interrupted by SIGTERM" in partial.error and partial.verdict == "healthy"
