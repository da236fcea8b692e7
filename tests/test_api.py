"""The Python API and the one import name: a user's own `reports` and `probes` packages keep
working beside the tool, in target mode and in script mode."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from torch import nn

import audit
from audit.probes.errors import UsageError
from audit.probes.results import InitResult

PROJECT = os.path.join(os.path.dirname(__file__), "projects", "shadowing")


def tiny():
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def test_run_init_in_process_renders_in_jupyter_and_as_json(tmp_path):
    result = audit.run("init", tiny, steps=2, schemes=["default", "kaiming_normal"],
                       out=str(tmp_path))
    assert isinstance(result, InitResult) and [s.name for s in result.schemes][0] == "default"
    page = result._repr_html_()
    assert page.lstrip().lower().startswith("<!doctype html>")
    assert json.loads(audit.to_json(result))["schema"] == "audit.init/1"
    assert {"init.json", "init.html"} <= set(os.listdir(tmp_path))


def test_run_refuses_built_models_for_audits_in_fresh_processes_and_unknown_settings():
    with pytest.raises(UsageError, match="built model"):
        audit.run("determinism", tiny())
    with pytest.raises(UsageError, match="unknown setting"):
        audit.run("init", tiny, stepz=3)
    with pytest.raises(UsageError, match="unknown audit"):
        audit.run("lint")


def _audit(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "audit", *args], cwd=PROJECT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("mode", ["target", "script"])
def test_user_packages_named_reports_and_probes_are_not_shadowed(mode, tmp_path):
    out = str(tmp_path / "out")
    common = ["--steps", "2", "--no-attribution", "--out", out, "-q"]
    args = (["determinism", "train.py:build", *common] if mode == "target"
            else ["determinism", *common, "--", sys.executable, "train.py"])
    proc = _audit(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.load(open(os.path.join(out, "determinism.json")))["verdict"] == "deterministic"
