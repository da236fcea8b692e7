"""Generators made without a seed, judged by what they did (issue #27, item 3).

A fake library package, written into a folder that looks like site-packages and put on
``PYTHONPATH``, makes generators without a seed the way gymnasium's spaces do (a SeedSequence
per space when the vector env is built, copies for the batched space) and the way a library
with a reseedable legacy generator does. Scripts that use it are audited unmodified through
``audit.cli.main``: a generator never drawn from, or reseeded before its first draw, fails
nothing; one drawn from while the runs agree is a latent source listed once, naming the library
call and the user's line, with a fix at the object the user holds.
"""
from __future__ import annotations

import json
import os
import textwrap

import pytest

from audit import cli, gate
from audit.probes.results import DeterminismResult

LIBRARY = '''
import copy

import numpy as np


class Space:
    """Like gymnasium's spaces: the generator is made on first use, without a seed."""

    def __init__(self):
        self._rng = None

    @property
    def np_random(self):
        if self._rng is None:
            self._rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence()))
        return self._rng

    def seed(self, seed):
        self._rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed)))

    def sample(self):
        return int(self.np_random.integers(4))


class VectorEnv:
    """Like gymnasium's SyncVectorEnv: builds the batched space from a copy of the generator."""

    def __init__(self, n):
        self.single_action_space = Space()
        self.action_space = Space()
        self.action_space._rng = copy.deepcopy(self.single_action_space.np_random)
        self.state = np.zeros(4)

    def reset(self, seed=None):
        self.state = np.full(4, 0.5 if seed is None else seed % 7 / 7)
        return self.state


class Jitter:
    """A legacy generator reseeded in place."""

    def __init__(self):
        self.rs = np.random.RandomState()

    def seed(self, seed):
        self.rs.seed(seed)

    def __call__(self):
        return float(self.rs.rand())
'''

SCRIPT = '''
import sys

import numpy as np
import torch

import fakegym

torch.manual_seed(0)
mode = sys.argv[1]
envs = fakegym.VectorEnv(2)  # LIBRARY-CALL
obs = envs.reset(seed=0)
jitter = fakegym.Jitter()  # JITTER
if mode == "mixed":
    jitter.seed(3)
    own = np.random.default_rng()  # OWN
model = torch.nn.Linear(4, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(50):
    if mode == "draw":
        envs.action_space.sample()
    if mode == "mixed":
        jitter()
        own.random()  # drawn, but nothing the training computes depends on it
    loss = model(torch.as_tensor(obs, dtype=torch.float32)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
'''


def line_of(marker: str) -> int:
    return next(i for i, line in enumerate(SCRIPT.splitlines(), 1) if marker in line)


@pytest.fixture
def project(tmp_path, monkeypatch):
    lib = tmp_path / "venv" / "lib" / "site-packages" / "fakegym"
    lib.mkdir(parents=True)
    (lib / "__init__.py").write_text(textwrap.dedent(LIBRARY))
    work = tmp_path / "work"
    work.mkdir()
    (work / "train.py").write_text(SCRIPT)
    monkeypatch.chdir(work)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(lib.parent), os.environ.get("PYTHONPATH")) if p))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return work


def audit(project, mode: str, capsys, latent: str = "warn") -> tuple:
    (project / "pyproject.toml").write_text(
        f"[project]\nname = 'rl'\n[tool.audit.determinism]\nlatent = \"{latent}\"\n")
    code = cli.main(["determinism", "--steps", "2", "--out", "report", "--", "python",
                     "train.py", mode])
    printed = capsys.readouterr().out
    return code, json.loads((project / "report" / "determinism.json").read_text()), printed


def test_a_library_generator_never_drawn_from_passes(project, capsys):
    code, doc, printed = audit(project, "quiet", capsys, latent="fail")
    assert code == 0, printed
    assert doc["verdict"] == "deterministic" and doc["latent_sources"] == []
    where = f"train.py:{line_of('LIBRARY-CALL')}"
    found = {(e["kind"], e["where"]): e for e in doc["rng_escapes"]}
    space = found[("numpy.random.SeedSequence()", where)]
    assert (space["use"], space["made_by"]) == ("unused", "fakegym.VectorEnv")
    jitter = found[("numpy.random.RandomState()", f"train.py:{line_of('JITTER')}")]
    assert (jitter["use"], jitter["made_by"]) == ("unused", "fakegym.Jitter")
    assert len(doc["rng_escapes"]) == 2  # the batched space's copy is not an escape of its own
    result = DeterminismResult.from_dict(doc)
    assert not [c.name for c in gate.checks_for("determinism", result) if not c.passed]
    assert "Failed checks" not in printed


def test_reseeded_before_its_first_draw_passes_and_the_users_own_drawn_generator_is_latent(
        project, capsys):
    code, doc, printed = audit(project, "mixed", capsys)
    assert code == 0, printed
    uses = {e["where"]: (e["use"], e["made_by"]) for e in doc["rng_escapes"]}
    assert uses[f"train.py:{line_of('JITTER')}"] == ("reseeded", "fakegym.Jitter")
    assert uses[f"train.py:{line_of('OWN')}"] == ("drawn", None)
    assert uses[f"train.py:{line_of('LIBRARY-CALL')}"] == ("unused", "fakegym.VectorEnv")
    (source,) = doc["latent_sources"]  # listed once: the one drawn from
    assert (source["source"], source["where"]) == ("unseeded_rng", f"train.py:{line_of('OWN')}")
    assert "default_rng(seed)" in source["fix"]
    checks = {c.name: c for c in gate.checks_for("determinism", DeterminismResult.from_dict(doc))}
    assert checks["no unseeded generators"].passed
    assert checks["no latent sources"].passed and checks["no latent sources"].where == source["where"]


def test_a_library_generator_drawn_from_is_a_latent_source_naming_the_call_and_the_line(
        project, capsys):
    code, doc, printed = audit(project, "draw", capsys, latent="fail")
    where = f"train.py:{line_of('LIBRARY-CALL')}"
    assert doc["verdict"] == "deterministic"
    (source,) = doc["latent_sources"]
    assert (source["source"], source["where"]) == ("unseeded_rng", where)
    assert "fakegym.VectorEnv" in source["evidence"]
    assert source["fix"].startswith("envs.action_space.seed(seed)")  # the object the user holds
    escape = next(e for e in doc["rng_escapes"] if e["where"] == where)
    assert (escape["use"], escape["holder"]) == ("drawn", "envs.action_space")
    # latent = "fail": exit 1, and the output says which check failed although the runs agree
    assert code == 1
    assert "Failed checks" in printed and "no latent sources" in printed.split("Failed checks")[1]
    result = DeterminismResult.from_dict(doc)
    result.latent_level = "warn"
    assert not [c.name for c in gate.checks_for("determinism", result) if not c.passed]


@pytest.mark.slow
def test_a_cleanrl_style_script_on_gymnasium_passes(tmp_path, monkeypatch, capsys):
    pytest.importorskip("gymnasium")
    (tmp_path / "ppo.py").write_text(textwrap.dedent('''
        import random

        import gymnasium as gym
        import numpy as np
        import torch
        import torch.nn as nn

        seed = 1
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        torch.backends.cudnn.deterministic = True


        def make_env():
            def thunk():
                return gym.wrappers.RecordEpisodeStatistics(gym.make("CartPole-v1"))
            return thunk


        envs = gym.vector.SyncVectorEnv([make_env() for _ in range(2)])
        agent = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 2))
        optimizer = torch.optim.Adam(agent.parameters(), lr=2.5e-4, eps=1e-5)
        obs, _ = envs.reset(seed=seed)
        for update in range(100):
            logits = agent(torch.tensor(obs, dtype=torch.float32))
            dist = torch.distributions.Categorical(logits=logits)
            action = dist.sample()
            obs, reward, terminated, truncated, _ = envs.step(action.numpy())
            loss = -(dist.log_prob(action) * torch.tensor(reward, dtype=torch.float32)).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    '''))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'ppo'\n")
    code = cli.main(["determinism", "--steps", "3", "--out", "report", "--", "python", "ppo.py"])
    printed = capsys.readouterr().out
    doc = json.loads((tmp_path / "report" / "determinism.json").read_text())
    assert code == 0, printed
    assert doc["verdict"] == "deterministic" and doc["latent_sources"] == []
    assert doc["rng_escapes"] and all(e["use"] != "drawn" for e in doc["rng_escapes"])
    assert all(e["made_by"] and e["made_by"].startswith("gymnasium.") for e in doc["rng_escapes"])
