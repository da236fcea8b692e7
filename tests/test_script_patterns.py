"""Script mode on the patterns tutorials write, each in both verdicts (issue #17).

The scripts are files under ``tests/scripts/``, audited unmodified through ``audit.cli.main``
from a copy in a temporary folder: a hand-written SGD update (steps are backward passes),
weights changed after the update (parameters changed outside the optimizer), labels from a
``set`` sliced in the loop (data without a DataLoader), a question on stdin, and a loader
whose batches come in the order its workers finish. Each has a fixed version (a flag of the
same script) that must pass. The audits run once per session, two at a time.
"""
from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from audit import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "tests", "scripts")

# name: (options, command after "--"), in the order the audits start: those that attribute a
# cause (knob pairs) first, then those with a replay, then the fixed versions (two runs each),
# so that the two audits at a time end together.
AUDITS = {
    "labels": (["--steps", "2"], ["python", "set_labels.py"]),
    "workers": (["--steps", "4"], ["python", "unordered_workers.py"]),
    "manual": (["--steps", "3", "--no-attribution"], ["python", "manual_sgd.py"]),
    "noise": (["--steps", "3", "--no-attribution"], ["python", "weight_noise.py"]),
    "manual_fixed": (["--steps", "3"], ["python", "manual_sgd.py", "--shuffle-seed", "0"]),
    "noise_fixed": (["--steps", "3"], ["python", "weight_noise.py", "--noise-seed", "1"]),
    "labels_fixed": (["--steps", "2"], ["python", "set_labels.py", "--sorted"]),
    "workers_fixed": (["--steps", "4"], ["python", "unordered_workers.py", "--in-order"]),
}


def line_of(name: str, marker: str) -> int:
    with open(os.path.join(SCRIPTS, name), encoding="utf-8") as fh:
        return next(i for i, line in enumerate(fh, 1) if marker in line)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("patterns")
    for name in os.listdir(SCRIPTS):
        if name.endswith(".py"):
            shutil.copy(os.path.join(SCRIPTS, name), folder / name)
    (folder / "pyproject.toml").write_text("[project]\nname = 'patterns'\n")  # no [tool.audit]
    return folder


def _audit(workdir, name: str) -> tuple:
    options, command = AUDITS[name]
    out = workdir / f"report-{name}"
    code = cli.main(["determinism", "--jobs", "2", "--quiet", "--out", str(out), *options, "--", *command])
    report = out / "determinism.json"
    return code, json.loads(report.read_text()) if report.exists() else None


@pytest.fixture(scope="session")
def audits(workdir):
    """Every audit above, two at a time, one CPU thread per run, PYTHONHASHSEED unset (the
    set-order script depends on it)."""
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "PYTHONHASHSEED")}
    old_cwd = os.getcwd()
    os.chdir(workdir)
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ.pop("PYTHONHASHSEED", None)
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = {name: pool.submit(_audit, workdir, name) for name in AUDITS}
            return {name: f.result() for name, f in futures.items()}
    finally:
        os.chdir(old_cwd)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def runs_of(doc: dict) -> list:
    return [(r["status"], r["steps_completed"]) for r in doc["run_info"]]


def passed(code: int, doc: dict, steps: int) -> None:
    assert code == 0, doc and (doc["first_divergence"], doc["causes"], doc.get("error"))
    assert doc["verdict"] == "deterministic" and doc["latent_sources"] == []
    assert runs_of(doc) == [("ok", steps)] * 2


# ------------------------------------------------------------------------------ steps by hand


def test_manual_sgd_counts_backward_passes_and_finds_the_unseeded_shuffle(audits):
    code, doc = audits["manual"]
    assert code == 1
    assert doc["detail"]["steps_counted"] == "backward passes"
    assert "one backward pass" in doc["detail"]["data"]
    fd = doc["first_divergence"]
    assert (fd["step"], fd["stage"], fd["tensor"]) == (0, "data", "inputs")
    assert fd["max_abs_diff"] > 0
    assert [(e["kind"], e["where"]) for e in doc["rng_escapes"]] == [
        ("numpy.random.default_rng()", f"manual_sgd.py:{line_of('manual_sgd.py', 'default_rng(')}")]


def test_manual_sgd_with_a_seeded_shuffle_passes(audits):
    code, doc = audits["manual_fixed"]
    passed(code, doc, 3)
    assert doc["detail"]["steps_counted"] == "backward passes"


def test_raw_tensor_weights_are_traced_by_their_names(workdir):
    """No module, no optimizer: the tensors the graph trains, named as the script's globals;
    each step's parameters are those after the script's own update."""
    from audit.probes.run import program as script_runner
    from audit.probes.run.trace import read_trace

    from audit.probes.run.spec import RunSpec, write_spec

    spec = RunSpec(name="run", trace=str(workdir / "raw.trace"), escape_log=str(workdir / "raw.esc"),
                   steps=3, device="cpu", script=["python", "raw_tensors.py"])
    write_spec(spec, str(workdir / "raw.json"))
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.run(script_runner.command(spec), cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = read_trace(spec.trace)
    header = next(r for r in records if r["type"] == "params")
    assert (header["names"], header["counting"]) == (["w1", "b1", "w2"], "backward")
    steps = [r for r in records if r["type"] == "step"]
    init = next(r for r in records if r["type"] == "init")
    assert len(steps) == 3 and records[-1]["status"] == "ok"
    assert steps[0]["params"] != init["params"]  # after the update by hand
    assert all(g is not None for g in steps[0]["grads"])


# ------------------------------------------------------------------------------ outside the optimizer


def test_weights_changed_after_the_update_are_named_as_such(audits):
    code, doc = audits["noise"]
    assert code == 1
    fd = doc["first_divergence"]
    assert (fd["step"], fd["stage"], fd["module"], fd["tensor"]) == (0, "optimizer", "0", "0.weight")
    assert fd["max_abs_diff"] > 0
    assert "outside the optimizer" in doc["detail"]["outside_optimizer"]
    assert doc["detail"]["steps_counted"] == "optimizer steps"
    assert [(e["kind"], e["where"]) for e in doc["rng_escapes"]] == [
        ("torch.Generator.seed()", f"weight_noise.py:{line_of('weight_noise.py', 'noise.seed()')}")]


def test_seeded_weight_noise_passes(audits):
    passed(*audits["noise_fixed"], 3)


# ------------------------------------------------------------------------------ data without a loader


def test_labels_from_a_set_are_data_targets_and_the_hash_seed(audits):
    code, doc = audits["labels"]
    assert code == 1
    fd = doc["first_divergence"]
    assert (fd["step"], fd["stage"], fd["tensor"]) == (0, "data", "targets")
    assert fd["max_abs_diff"] > 0
    cause = doc["causes"][0]
    assert (cause["source"], cause["confirmed"]) == ("hash_seed", True)
    trial = doc["knob_trials"][-1]
    assert trial["knob"] == "pythonhashseed" and trial["removed"]
    assert trial["pairs"] >= 2 and trial["luck"] <= 0.01  # beats chance, and says how surely


def test_sorted_labels_pass(audits):
    passed(*audits["labels_fixed"], 2)


# ------------------------------------------------------------------------------ workers out of order


def test_workers_out_of_order_are_made_to_act_and_proven(audits):
    code, doc = audits["workers"]
    assert code == 1
    assert doc["first_divergence"]["stage"] == "data"
    cause = doc["causes"][0]
    assert (cause["source"], cause["confirmed"]) == ("dataloader", True), doc["knob_trials"]
    assert cause["where"] == f"unordered_workers.py:{line_of('unordered_workers.py', 'DataLoader(Squares()')}"


def test_workers_in_order_pass(audits):
    passed(*audits["workers_fixed"], 4)


# ------------------------------------------------------------------------------ stdin


def _cli(workdir, args: list, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "audit", "determinism", "--jobs", "2", *args],
                          cwd=workdir, env=env, capture_output=True, timeout=300, **kwargs)


def test_piped_stdin_reaches_every_run(workdir):
    out = workdir / "report-stdin"
    proc = _cli(workdir, ["--steps", "2", "--quiet", "--out", str(out), "--", "python", "ask_epochs.py"],
                input=b"3\n")
    doc = json.loads((out / "determinism.json").read_text())
    assert proc.returncode == 0, proc.stderr
    assert runs_of(doc) == [("ok", 2), ("ok", 2)]


def test_a_script_reading_stdin_at_a_terminal_is_told_how_to_give_it(workdir):
    main, other = pty.openpty()
    try:
        proc = _cli(workdir, ["--steps", "2", "--quiet", "--out", str(workdir / "report-tty"), "--",
                              "python", "ask_epochs.py"], stdin=other)
    finally:
        os.close(main)
        os.close(other)
    err = proc.stderr.decode().strip()
    assert proc.returncode == 2
    assert len(err.splitlines()) == 1, err
    assert "reads standard input" in err and "| audit determinism" in err
    assert f"ask_epochs.py:{line_of('ask_epochs.py', 'int(input(')}" in err
