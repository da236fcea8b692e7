"""Fresh runs import the tool from where it is installed, whatever the working folder holds, and
give the user's code the import path a plain ``python train.py`` gives it (#27, item 1)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile

import pytest

import audit.probes

#: Folder of the console script ``audit`` in this environment: a child started from there has
#: the script's folder, not the working folder, first on ``sys.path``, as users run it.
AUDIT = os.path.join(os.path.dirname(sys.executable), "audit")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tool_module_names() -> list[str]:
    """Every name a module or package of the tool's engines has, at any depth (a user's
    top-level package of that name must never be taken for it)."""
    names = set()
    for _, dirs, files in os.walk(audit.probes.__path__[0]):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        names |= {n[:-3] for n in files if n.endswith(".py") and not n.startswith("_")}
        names |= set(dirs)
    return sorted(names | {"probes", "reports", "audit_probes"})


def _write_project(root: str) -> dict:
    """A project whose working folder has its own ``audit`` package, whose installed packages
    (on its ``PYTHONPATH``) are named like the tool's modules, and whose script imports the
    standard library's modules of those names. Returns the environment to run it with."""
    libs = os.path.join(root, "libs")
    stdlib = set(sys.stdlib_module_names)
    user = [n for n in _tool_module_names() if n not in stdlib]
    for name in user:
        os.makedirs(os.path.join(libs, name))
        with open(os.path.join(libs, name, "__init__.py"), "w") as fh:
            fh.write('OWNER = "user"\n')
    os.makedirs(os.path.join(root, "audit"))
    with open(os.path.join(root, "audit", "__init__.py"), "w") as fh:
        fh.write('raise ImportError("the project\'s own audit package was imported by the tool")\n')
    std = sorted(stdlib & set(_tool_module_names()))
    with open(os.path.join(root, "train.py"), "w") as fh:
        fh.write(textwrap.dedent(f"""\
            import importlib, sysconfig
            import torch
            from torch import nn

            STDLIB = sysconfig.get_paths()["stdlib"]
            for name in {std!r}:
                mod = importlib.import_module(name)
                assert mod.__file__.startswith(STDLIB), f"{{name}} is not the standard library's"
            for name in {user!r}:
                assert importlib.import_module(name).OWNER == "user", f"{{name}} is not the user's"


            def build():
                torch.manual_seed(0)
                model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
                g = torch.Generator().manual_seed(0)
                data = [(torch.randn(8, 4, generator=g), torch.randint(0, 2, (8,), generator=g))
                        for _ in range(3)]
                return {{"model": model, "data": data}}


            if __name__ == "__main__":
                setup = build()
                model = setup["model"]
                opt = torch.optim.SGD(model.parameters(), lr=0.1)
                for inputs, targets in setup["data"]:
                    opt.zero_grad()
                    nn.functional.cross_entropy(model(inputs), targets).backward()
                    opt.step()
            """))
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": libs}


def test_the_tool_has_modules_a_user_may_also_have():
    assert {"trace", "worker", "progress", "results", "training", "spec", "processes",
            "target", "run", "script", "child", "compare"} <= set(_tool_module_names())


@pytest.mark.parametrize("mode", ["target", "script"])
def test_runs_import_what_a_plain_run_imports(mode, tmp_path):
    env = _write_project(str(tmp_path))
    plain = subprocess.run([sys.executable, "train.py"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr
    out = str(tmp_path / "out")
    common = ["determinism", "--steps", "2", "--no-attribution", "--out", out, "-q"]
    args = ([*common, "train.py:build"] if mode == "target"
            else [*common, "--", sys.executable, "train.py"])
    proc = subprocess.run([AUDIT, *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(os.path.join(out, "determinism.json")) as fh:
        assert json.load(fh)["verdict"] == "deterministic"


def test_a_run_that_dies_before_reporting_shows_its_last_lines(tmp_path):
    """A child that dies as its interpreter starts (here: a ``sitecustomize`` that fails in
    the audit's runs only) writes no record; its last lines are in the one-line error."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os, sys\n"
        "if 'audit.probes.child.worker' in sys.orig_argv:\n"
        "    print('ModuleNotFoundError: the-last-words-of-the-run', file=sys.stderr, flush=True)\n"
        "    os._exit(1)\n")
    out = str(tmp_path / "out")
    proc = subprocess.run([AUDIT, "determinism", "--steps", "2", "--no-attribution", "--out", out],
                          cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1",
                                             "PYTHONPATH": str(site)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "the-last-words-of-the-run" in proc.stderr.strip().splitlines()[-1]


def _regular_install(tmp_path) -> str:
    """This checkout installed as users install it (a built wheel, not an editable link) into a
    fresh environment that borrows this one's third-party packages; its ``audit`` script."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), REPO], check=True, capture_output=True, timeout=600)
    venv = tmp_path / "venv"
    subprocess.run([sys.base_prefix + "/bin/python3", "-m", "venv", "--without-pip", str(venv)],
                   check=True, timeout=120)
    site = subprocess.run([str(venv / "bin" / "python"), "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    with zipfile.ZipFile(next(wheels.glob("audit-*.whl"))) as wheel:
        wheel.extractall(site)
    # This environment's packages, but not its editable finder for the checkout: a path line
    # in a .pth file adds the folder without running the .pth files inside it.
    with open(os.path.join(site, "borrowed.pth"), "w") as fh:
        fh.write(sysconfig.get_paths()["purelib"] + "\n")
    script = venv / "bin" / "audit"
    script.write_text(f"#!{venv / 'bin' / 'python'}\nimport sys\nfrom audit.cli import entry\n"
                      "sys.exit(entry())\n")
    script.chmod(0o755)
    return str(script)


@pytest.mark.slow
def test_quick_start_from_the_clone_and_from_a_project_with_its_own_audit_package(tmp_path):
    tool = _regular_install(tmp_path)
    clone = tmp_path / "clone"
    shutil.copytree(REPO, clone, ignore=shutil.ignore_patterns(".git", ".venv", "*.egg-info",
                                                               "audit-report", "__pycache__"))
    project = tmp_path / "project"
    _write_project(str(project))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    for cwd, args in ((clone, ["determinism"]),
                      (project, ["determinism", "--steps", "2", "--runs", "2"])):
        proc = subprocess.run([tool, *args], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=900)
        assert proc.returncode == 0, f"in {cwd}: " + proc.stdout + proc.stderr
        with open(cwd / "audit-report" / "determinism.json") as fh:
            assert json.load(fh)["verdict"] == "deterministic"
