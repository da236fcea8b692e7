"""The pytest plugin: fixtures that run the audits and fail a test with the CLI's explanation."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

import torch

import audit.pytest_plugin as plugin

pytest_plugins = ["pytester"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEMO = textwrap.dedent('''
    import numpy as np
    import torch
    from torch import nn


    def build():
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        g = torch.Generator().manual_seed(0)
        data = [(torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g))
                for _ in range(3)]
        return {"model": model, "data": data}


    def deep_sigmoid():
        layers = []
        for _ in range(12):
            layers += [nn.Linear(32, 32), nn.Sigmoid()]
        g = torch.Generator().manual_seed(0)
        data = [(torch.randn(16, 32, generator=g), torch.randint(0, 3, (16,), generator=g))
                for _ in range(3)]
        return {"model": nn.Sequential(*layers, nn.Linear(32, 3)), "data": data}
''')

UNSEEDED = textwrap.dedent('''
    import numpy as np
    import torch
    from torch import nn


    def build():
        rng = np.random.default_rng()
        data = [(torch.tensor(rng.standard_normal((16, 8)), dtype=torch.float32),
                 torch.tensor(rng.integers(0, 3, 16))) for _ in range(2)]
        return {"model": nn.Sequential(nn.Linear(8, 3)), "data": data}
''')

TESTS = textwrap.dedent('''
    from torch import nn

    from demo_targets import build, deep_sigmoid


    def test_reproducible(determinism_audit):
        result = determinism_audit(build, steps=2, jobs=2)
        assert result.verdict == "deterministic"


    def test_module_object_init_is_healthy(init_audit):
        net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        result = init_audit(net, input_shape=(8,), num_classes=3, steps=2, schemes="default")
        assert result.verdict == "healthy"


    def test_sigmoid_init_fails(init_audit):
        init_audit(deep_sigmoid, steps=2, schemes="default,kaiming_normal")


    def test_sigmoid_init_without_failing(init_audit):
        result = init_audit(deep_sigmoid, steps=2, schemes=["default"], fail=False)
        assert result.verdict == "unhealthy"


    def test_unseeded_data_fails(determinism_audit):
        determinism_audit("unseeded.py:build", steps=2, jobs=2, attribution=False)


    def test_lambda_is_refused(determinism_audit):
        determinism_audit(lambda: build())
''')


def test_fixtures_pass_and_fail_with_the_cli_explanation(pytester, monkeypatch):
    # A separate pytest process: in-process runs unload the modules they import, and torch
    # cannot be imported twice into one process.
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", ROOT + (os.pathsep + path if path else ""))
    pytester.makepyfile(demo_targets=DEMO, test_demo=TESTS)
    (pytester.path / "data").mkdir()
    (pytester.path / "data" / "unseeded.py").write_text(UNSEEDED, encoding="utf-8")
    # The string target is relative to the test file's folder when it is not found from the
    # working folder: put the test file next to it.
    (pytester.path / "test_demo.py").rename(pytester.path / "data" / "test_demo.py")
    (pytester.path / "demo_targets.py").rename(pytester.path / "data" / "demo_targets.py")
    result = pytester.runpytest_subprocess(*_plugin_args(), "-p", "no:cacheprovider",
                                           "data/test_demo.py")
    result.assert_outcomes(passed=3, failed=3)
    text = result.stdout.str()

    # The init failure: the same summary `audit init` prints, and the failed checks.
    sigmoid = _section(text, "test_sigmoid_init_fails")
    assert "audit init  FAIL  The model's own init is unhealthy" in sigmoid
    assert "Findings for the model's own init" in sigmoid
    assert "Vanishing gradients" in sigmoid and "What to do:" in sigmoid
    assert "Failed checks:" in sigmoid and "- default init healthy" in sigmoid
    assert "Traceback" not in sigmoid

    # The determinism failure: where the runs part and the unseeded generator with its place.
    unseeded = _section(text, "test_unseeded_data_fails")
    assert "audit determinism  FAIL  Nondeterministic" in unseeded
    assert "Where the runs part" in unseeded
    assert "numpy.random.default_rng()" in unseeded and "unseeded.py:" in unseeded
    assert "- no unseeded generators (at " in unseeded

    refused = _section(text, "test_lambda_is_refused")
    assert "determinism_audit cannot use a lambda" in refused
    assert "define it at module level" in refused
    assert "During handling" not in refused and "Traceback" not in refused


def _plugin_args() -> list:
    """``-p audit.pytest_plugin`` unless the installed package's entry point loads it already
    (naming it twice is an error)."""
    from importlib.metadata import entry_points

    installed = any(ep.value == "audit.pytest_plugin" for ep in entry_points(group="pytest11"))
    return [] if installed else ["-p", "audit.pytest_plugin"]


def test_entry_point_loads_the_fixtures(pytester, monkeypatch):
    """As installed: a ``pytest11`` entry point named in a distribution's metadata."""
    site = pytester.mkdir("site")
    info = site / "audit_demo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: audit-demo\nVersion: 0.1\n",
                                   encoding="utf-8")
    (info / "entry_points.txt").write_text("[pytest11]\naudit = audit.pytest_plugin\n",
                                           encoding="utf-8")
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [ROOT, str(site), path])))
    pytester.makepyfile(test_fixtures=(
        "import sys\n"
        "def test_fixtures(determinism_audit, init_audit):\n"
        "    assert callable(determinism_audit) and callable(init_audit)\n"
        "    assert 'torch' not in sys.modules  # nothing heavy until a fixture runs\n"))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def _section(text: str, test: str) -> str:
    """The failure section of one test in pytest's output."""
    start = text.index(f"_ {test} _")
    end = text.find("\n____", start + 1)
    short = text.find("short test summary", start)
    ends = [e for e in (end, short) if e != -1]
    return text[start:min(ends)] if ends else text[start:]


# --------------------------------------------------------------------------- naming targets


def module_level():  # a function in an importable module (this test module is one too)
    return None


def test_function_in_a_test_file_is_named_by_its_file():
    spec, extra = plugin.process_target(module_level)
    assert spec == f"{os.path.abspath(__file__)}:module_level" and extra is None


def test_function_in_an_importable_module_is_named_by_module_and_qualname():
    from audit import example

    spec, extra = plugin.process_target(example.build)
    assert spec == "audit.example:build"
    assert extra == ROOT


def test_lambdas_closures_and_modules_are_refused():
    def inner():
        return None

    with pytest.raises(plugin.AuditTargetError, match="a function defined inside another"):
        plugin.process_target(inner)
    with pytest.raises(plugin.AuditTargetError, match="a lambda"):
        plugin.process_target(lambda: None)
    with pytest.raises(plugin.AuditTargetError, match="cannot send them an nn.Module object"):
        plugin.process_target(torch.nn.Linear(2, 2))
    with pytest.raises(plugin.AuditTargetError, match="got an object of type int"):
        plugin.process_target(3)


def test_string_targets_resolve_beside_the_test_file(tmp_path, monkeypatch):
    (tmp_path / "t.py").write_text("def build(): pass\n", encoding="utf-8")
    monkeypatch.chdir(os.path.dirname(tmp_path))
    assert plugin.process_target("t.py:build", str(tmp_path))[0] == f"{tmp_path / 't.py'}:build"
    assert plugin.process_target("pkg.mod:build", str(tmp_path))[0] == "pkg.mod:build"


def test_plugin_is_import_light_and_declared():
    code = "import sys, audit.pytest_plugin; print('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        project = tomllib.load(fh)["project"]
    assert project["entry-points"]["pytest11"]["audit"] == "audit.pytest_plugin"
