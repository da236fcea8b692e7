"""Real public training code, unmodified, audited as a user would (issue #27, item 6).

Each script under ``tests/corpus/`` is a byte-for-byte copy from a public repository (each
project's README says which commit, and its LICENSE is beside it). For each, on a copy in a
temporary folder with the few files it reads written by the test (MNIST idx files, a tiny text
corpus, a short sine-wave array):

* the truth: two plain runs under ``tests/corpus_truth.py`` (fingerprints of the parameters,
  loss and gradients of every step, no audit involved) say whether the script is bit-identical
  from run to run and, when not, where the runs part; two more with the global generators
  seeded before the script starts say whether an unseeded global generator is what parts them;
* the audit: ``audit determinism --steps N -- python SCRIPT ARGS`` in a fresh process, whose
  verdict, exit status, stage and cause must be the truth's.

The plain runs and the audits run once per session, two at a time. Third-party packages come
from the optional extra ``realworld``; a case whose packages are missing is skipped. The
projects tried (kept or not) and what the audit answered are in ``docs/corpus.md``.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pytest
from corpus_truth import first_difference

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "tests", "corpus")
TRUTH = os.path.join(ROOT, "tests", "corpus_truth.py")


def write_mnist(root: str) -> None:
    """The four idx files torchvision's ``MNIST('../data')`` reads, so nothing is downloaded."""
    raw = os.path.join(root, "data", "MNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 128), ("t10k", 64)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        with open(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), "wb") as fh:
            fh.write(struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes())
        with open(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), "wb") as fh:
            fh.write(struct.pack(">II", 0x801, n) + labels.tobytes())


def write_text_corpus(root: str) -> None:
    """train/valid/test.txt as the word language model's ``data.Corpus`` reads them."""
    folder = os.path.join(root, "word_language_model", "tiny")
    os.makedirs(folder, exist_ok=True)
    words = np.array(["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "to", "park", "and",
                      "ate", "fish"])
    rng = np.random.default_rng(0)
    for name, lines in (("train", 40), ("valid", 8), ("test", 8)):
        rows = rng.choice(words, size=(lines, 12))
        with open(os.path.join(folder, f"{name}.txt"), "w", encoding="utf-8") as fh:
            fh.writelines(" " + " ".join(row) + " \n" for row in rows)


def write_sine_waves(root: str) -> None:
    """``traindata.pt`` as ``generate_sine_wave.py`` writes it (a float64 NumPy array saved
    with ``torch.save``), 8 waves of 60 points instead of 100 of 1000: one LBFGS step over
    the full array is about 46 s of CPU."""
    import torch

    rng = np.random.default_rng(2)
    x = np.arange(60) + rng.integers(-80, 80, 8).reshape(8, 1)
    path = os.path.join(root, "time_sequence_prediction", "traindata.pt")
    with open(path, "wb") as fh:
        torch.save(np.sin(x / 20.0).astype("float64"), fh)


@dataclass(frozen=True)
class Case:
    project: str                         # folder under tests/corpus/
    script: str                          # path in it; the script runs from its own folder
    args: list[str]
    steps: int
    parts: tuple[str, str] | None     # None: bit-identical; else (stage, cause source)
    needs: tuple[str, ...] = ()          # third-party modules (the ``realworld`` extra)
    env: dict[str, str] = field(default_factory=dict)
    cost: int = 1                        # start order: the costliest first


CASES = {
    "mnist": Case("pytorch-examples", "mnist/main.py",
                  ["--epochs", "1", "--batch-size", "16", "--test-batch-size", "64"], 3, None),
    "regression": Case("pytorch-examples", "regression/main.py", [], 3,
                       ("init", "unseeded_rng"), cost=3),
    "word_language_model": Case(
        "pytorch-examples", "word_language_model/main.py",
        ["--data", "tiny", "--emsize", "16", "--nhid", "16", "--nlayers", "2", "--bptt", "8",
         "--batch_size", "4", "--epochs", "1"], 3, None),
    # Written for torch < 2.6: torch.load of a NumPy array needs weights_only=False, which a
    # user of a newer torch gets from this variable, the script unchanged.
    "time_sequence_lbfgs": Case("pytorch-examples", "time_sequence_prediction/train.py",
                                ["--steps", "3"], 2, None,
                                env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}, cost=2),
    "cleanrl_ppo": Case("cleanrl", "ppo.py",
                        ["--num-envs", "2", "--num-steps", "16", "--num-minibatches", "2",
                         "--update-epochs", "2", "--total-timesteps", "64", "--no-cuda"], 4, None,
                        needs=("gymnasium", "tyro", "tensorboard")),
    "lightning_bug_report": Case("lightning", "bug_report_model.py", [], 1,
                                 ("init", "unseeded_rng"), needs=("lightning",), cost=4),
}

SETUP: dict[str, Callable[[str], None]] = {
    "mnist": write_mnist, "word_language_model": write_text_corpus,
    "time_sequence_lbfgs": write_sine_waves,
}

#: The truth's part where two runs first differ -> the audit stages that may name it.
STAGES = {"params": {"init", "optimizer"}, "loss": {"data", "rng", "forward"},
          "grads": {"backward"}, "final": {"optimizer"}}


def available(case: Case) -> bool:
    return all(importlib.util.find_spec(name) is not None for name in case.needs)


def child_env(case: Case) -> dict[str, str]:
    """A user's shell: one CPU thread (two processes at a time on a 2-core runner), no fixed
    string-hash seed, the case's own variables."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    env.update(OMP_NUM_THREADS="1", MPLBACKEND="Agg", **case.env)
    return env


def plain(case: Case, cwd: str, out: str, seed: int | None = None) -> dict:
    """One plain run of the script under the truth runner; its fingerprints."""
    seeded = ["--seed", str(seed)] if seed is not None else []
    cmd = [sys.executable, TRUTH, out, str(case.steps), *seeded,
           os.path.basename(case.script), *case.args]
    proc = subprocess.run(cmd, check=False, cwd=cwd, env=child_env(case), capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out, encoding="utf-8") as fh:
        return json.load(fh)


def audit(case: Case, cwd: str, out: str) -> tuple[int, dict | None, str]:
    """``audit determinism`` on the unmodified script, as a user types it."""
    cmd = [sys.executable, "-m", "audit", "determinism", "--jobs", "2", "--out", out,
           "--steps", str(case.steps), "--", "python", os.path.basename(case.script), *case.args]
    proc = subprocess.run(cmd, check=False, cwd=cwd, env=child_env(case), capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)
    report = os.path.join(out, "determinism.json")
    doc = None
    if os.path.exists(report):
        with open(report, encoding="utf-8") as fh:
            doc = json.load(fh)
    return proc.returncode, doc, proc.stdout[-3000:] + proc.stderr[-3000:]


@dataclass
class Outcome:
    truth: list[dict]             # two plain runs
    seeded: list[dict]            # two plain runs seeded first (only where the plain ones part)
    code: int
    doc: dict | None
    output: str


def run_case(name: str, case: Case, copy: str, reports: str) -> Outcome:
    cwd = os.path.join(copy, case.project, os.path.dirname(case.script))
    truth = [plain(case, cwd, os.path.join(reports, f"{name}-{i}.json")) for i in range(2)]
    seeded = []
    if first_difference(*truth) is not None:
        seeded = [plain(case, cwd, os.path.join(reports, f"{name}-s{i}.json"), seed=0)
                  for i in range(2)]
    code, doc, output = audit(case, cwd, os.path.join(reports, name))
    return Outcome(truth, seeded, code, doc, output)


@pytest.fixture(scope="session")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """Every available case once: a copy of the corpus, the files the scripts read, the plain
    runs and the audit; two cases at a time, the costliest first."""
    copy = str(tmp_path_factory.mktemp("corpus"))
    shutil.copytree(CORPUS, copy, dirs_exist_ok=True)
    reports = str(tmp_path_factory.mktemp("corpus-reports"))
    for name, setup in SETUP.items():
        setup(os.path.join(copy, CASES[name].project))
    todo = sorted((n for n, c in CASES.items() if available(c)), key=lambda n: -CASES[n].cost)
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {n: pool.submit(run_case, n, CASES[n], copy, reports) for n in todo}
        return {n: f.result() for n, f in futures.items()}


def outcome_of(outcomes: dict[str, Outcome], name: str) -> Outcome:
    """The case's outcome, or a skip naming the missing package (found without importing it:
    ``import lightning`` alone is seconds of the suite's time)."""
    missing = [m for m in CASES[name].needs if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}: pip install -e '.[realworld]'")
    return outcomes[name]


# ------------------------------------------------------------------------------ the truth


@pytest.mark.parametrize("name", list(CASES))
def test_plain_runs_give_the_expected_truth(outcomes: dict[str, Outcome], name: str) -> None:
    """The corpus is set up right: both plain runs trained the steps asked for, and they are
    bit-identical exactly where the case says so; where they part, seeding the global
    generators before the script makes them agree (an unseeded global generator parts them)."""
    case, out = CASES[name], outcome_of(outcomes, name)
    assert [t["status"] for t in out.truth] == ["stopped"] * 2
    difference = first_difference(*out.truth)
    if case.parts is None:
        assert difference is None
    else:
        assert difference is not None and case.parts[0] in STAGES[difference["part"]]
        if case.parts[0] == "init":
            assert difference == {"pass": 0, "part": "params"}
        assert first_difference(*out.seeded) is None


# ------------------------------------------------------------------------------ the audit


@pytest.mark.parametrize("name", list(CASES))
def test_the_audit_verdict_is_the_plain_runs_verdict(outcomes: dict[str, Outcome],
                                                     name: str) -> None:
    case, out = CASES[name], outcome_of(outcomes, name)
    doc = out.doc
    assert doc is not None, out.output
    runs = [(r["status"], r["steps_completed"]) for r in doc["run_info"]]
    assert runs == [("ok", case.steps)] * 2
    expected = "deterministic" if first_difference(*out.truth) is None else "nondeterministic"
    assert doc["verdict"] == expected, out.output


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.parts is not None])
def test_where_the_runs_part_is_where_the_plain_runs_part(outcomes: dict[str, Outcome],
                                                          name: str) -> None:
    """The stage and step the truth shows, and the cause that seeding the global generators
    proved, named first and confirmed."""
    case, out = CASES[name], outcome_of(outcomes, name)
    difference = first_difference(*out.truth)
    fd = out.doc["first_divergence"]
    assert fd["stage"] in STAGES[difference["part"]] and fd["stage"] == case.parts[0]
    assert fd["step"] == (None if fd["stage"] == "init" else difference["pass"])
    cause = out.doc["causes"][0]
    assert (cause["source"], cause["confirmed"]) == (case.parts[1], True)
    assert cause["where"].startswith(os.path.basename(case.script) + ":")


@pytest.mark.parametrize("name", list(CASES))
def test_exit_status_and_gate_follow_the_truth(outcomes: dict[str, Outcome], name: str) -> None:
    """0 with nothing failing for a bit-identical script, 1 where the plain runs part."""
    case, out = CASES[name], outcome_of(outcomes, name)
    assert out.code == (0 if case.parts is None else 1), out.output
    if case.parts is None:
        assert out.doc["latent_sources"] == [], out.doc["latent_sources"]
