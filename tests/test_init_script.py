"""``audit init -- python train.py``: the init audit on unmodified training scripts."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCRIPTS = os.path.join(os.path.dirname(__file__), "scripts")


def audit_init(script: str, tmp_path, *extra: str) -> tuple:
    out = str(tmp_path / script)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "audit", "init", "-q", "--steps", "3",
                           "--schemes", "default,kaiming_normal", "--out", out, *extra,
                           "--", "python", f"{script}.py"],
                          cwd=SCRIPTS, env=env, capture_output=True, text=True, timeout=600)
    path = os.path.join(out, "init.json")
    return proc, (json.load(open(path, encoding="utf-8")) if os.path.isfile(path) else None)


@pytest.mark.parametrize("script, kinds", [
    ("init_deep_relu", {"vanishing_gradients"}),
    ("init_weights_init", {"exploding_activations"}),
])
def test_an_unhealthy_script_init_gets_its_findings_and_a_healthy_recommendation(
        script, kinds, tmp_path):
    proc, doc = audit_init(script, tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert doc["mode"] == "script" and doc["target"] == f"python {script}.py"
    default = doc["schemes"][0]
    assert default["name"] == "default" and doc["verdict"] == "unhealthy"
    assert kinds <= {f["kind"] for f in default["findings"]}
    best = next(s for s in doc["schemes"] if s["name"] == doc["recommended"])
    assert doc["recommended"] == "kaiming_normal" and best["verdict"] == "healthy"
    assert len(best["loss"]) == 3 and best["layers"]
    assert f"{script}.py:" in doc["recommendation_code"]  # names the script's own line


def test_a_healthy_script_passes(tmp_path):
    proc, doc = audit_init("init_bn_cnn", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert doc["verdict"] == "healthy" and doc["recommended"] == "default"
    assert [layer["type"] for layer in doc["schemes"][0]["layers"]][:2] == ["Conv2d", "BatchNorm2d"]


def test_a_script_that_never_trains_is_one_line_and_exit_2(tmp_path):
    proc, _ = audit_init("init_no_training", tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "optimizer step" in proc.stderr
    assert proc.stderr.startswith("audit init: ")  # the command that was run, not another
