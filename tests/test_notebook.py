"""Audits from a notebook (issue #26): targets defined in cells shipped by value to fresh runs,
places named as the notebook names its cells, results shown inline, the tutorial.

The unit tests ship objects from this process and load them in fresh ones; the slow tests
execute notebooks in a real Jupyter kernel (nbclient), skipped without the ``notebook`` extra.
"""
from __future__ import annotations

import importlib.util
import io
import json
import os
import pickle
import subprocess
import sys
import threading

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from audit.gate.progress import PREFIX, ProgressDisplay, in_notebook
from audit.probes.errors import UsageError
from audit.probes.progress import Progress
from audit.probes.run import processes, shipped
from audit.probes.run.seeding import seed_all
from audit.probes.run.target import is_shipped, label, load_target, parse_spec, shipped_spec
from audit.probes.results.variance import COMPARE_VERDICTS

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")


@pytest.fixture
def cells():
    """:data:`processes.CELLS`, restored after the test."""
    saved = dict(processes.CELLS)
    yield processes.CELLS
    processes.CELLS.clear()
    processes.CELLS.update(saved)


def _make(width: int):
    shift = torch.arange(3.0)  # a tensor the closure holds: shipped by value

    def build():
        model = nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 3))
        with torch.no_grad():
            model[2].bias += shift
        return model
    return build


_REBUILD = ("import sys, torch\n"
            "from audit.probes.run.seeding import seed_all\n"
            "from audit.probes.run.target import load_target\n"
            "seed_all(int(sys.argv[2]))\n"
            "setup = load_target(sys.argv[1], input_shape=(4,), num_classes=3)\n"
            "torch.save({'state': setup.model.state_dict(), 'data': setup.data}, sys.argv[3])\n")


def _rebuilt(spec: str, seed: int, path: str) -> dict:
    subprocess.run([sys.executable, "-c", _REBUILD, spec, str(seed), path], check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    return torch.load(path)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_closure_is_rebuilt_bit_identically_in_fresh_processes_under_matched_seeds(tmp_path):
    spec = shipped.ship(_make(5), str(tmp_path / "ship"))
    assert is_shipped(spec) and label(spec).startswith("_make.<locals>.build (")
    first, second = (_rebuilt(spec, 0, str(tmp_path / f"{i}.pt")) for i in range(2))
    seed_all(0)
    here = load_target(spec, input_shape=(4,), num_classes=3)
    assert _same(first["state"], second["state"]) and _same(first["state"], here.model.state_dict())
    assert all(torch.equal(a, b) for x, y in zip(first["data"], here.data) for a, b in zip(x, y))
    other = _rebuilt(spec, 1, str(tmp_path / "other.pt"))
    assert not _same(first["state"], other["state"])  # the seed reaches the build


def _sized(width: int):
    return lambda: nn.Linear(4, width)


def test_closures_over_other_values_are_other_code_to_the_fingerprint(tmp_path):
    specs = [shipped.ship(_sized(w), str(tmp_path)) for w in (5, 5, 6)]
    codes = []
    for spec in specs:
        with open(parse_spec(spec).where, "rb") as fh:
            codes.append(pickle.load(fh)["code"])
    assert codes[0] == codes[1] != codes[2]
    assert any("def _sized" in text for text in codes[0])  # the source text, for the same code


def _generator(tmp_path):
    stream = (i for i in range(10))
    next(stream)  # running
    return (lambda: nn.Linear(next(stream) + 1, 2)), "stream", "generator"


def _written_file(tmp_path):
    log = open(tmp_path / "log.txt", "w")

    def build():
        log.write("built\n")
        return nn.Linear(2, 2)
    return build, "log", "TextIOWrapper"


def _lock_in_a_dict(tmp_path):
    state = {"lock": threading.Lock(), "width": 3}

    def build():
        with state["lock"]:
            return nn.Linear(state["width"], 2)
    return build, "state -> ['lock']", "lock"


@pytest.mark.parametrize("make", [_generator, _written_file, _lock_in_a_dict])
def test_what_cannot_be_shipped_is_refused_in_one_line_naming_it(make, tmp_path):
    target, name, kind = make(tmp_path)
    folder = tmp_path / "ship"
    with pytest.raises(UsageError) as refused:
        shipped.ship(target, str(folder))
    message = str(refused.value)
    assert "\n" not in message and f" -> {name} (a " in message and kind in message
    assert not folder.exists() or not os.listdir(folder)  # nothing shipped


def test_a_built_model_or_a_value_is_refused_before_pickling(tmp_path):
    for target in (nn.Linear(2, 2), 3):
        with pytest.raises(UsageError, match="the target is a"):
            shipped.ship(target, str(tmp_path))


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_a_shipped_target_keeps_its_label_whatever_it_reads(text):
    spec = shipped_spec("/tmp/audit-target-x/target-0.pkl", text)
    assert is_shipped(spec) and label(spec) == text


def test_file_and_module_targets_are_not_shipped_ones():
    assert not is_shipped("train.py:build") and not is_shipped("pkg.mod:build,lr=0.1")
    assert label("train.py:build,lr=0.1") == "train.py:build,lr=0.1" and "built-in" in label(None)


def test_places_in_cells_read_as_the_notebook_names_them(cells):
    processes.name_cells({"/tmp/ipykernel_1/123.py": 4, "<ipython-input-2-abc>": 2})
    assert processes.place("/tmp/ipykernel_1/123.py", 7) == "cell 4, line 7"
    assert processes.Frame("<ipython-input-2-abc>", 3, "build").where == "cell 2, line 3"
    assert processes.is_user_file("<ipython-input-2-abc>") and not processes.is_user_file("<string>")
    assert processes.place(__file__, 5) == f"{processes.short_path(__file__)}:5"


def test_an_ipython_sessions_cells_are_found_by_their_code_files(cells, tmp_path, monkeypatch):
    pytest.importorskip("IPython")
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    monkeypatch.setenv("IPYTHONDIR", str(tmp_path))
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    shell = InteractiveShell.instance(config=config)
    try:
        shell.run_cell("x = 1", store_history=True)
        shell.run_cell("def build():\n    return x\n", store_history=True)
        build = shell.user_ns["build"]
        found = shipped.kernel_cells()
        assert found[build.__code__.co_filename] == 2
        processes.name_cells(found)
        assert shipped.label(build) == "build (cell 2, line 1)"
    finally:
        InteractiveShell.clear_instance()


def test_in_a_notebook_progress_is_a_bar_not_lines():
    stream = io.StringIO()
    show = ProgressDisplay(stream=stream, tty=False, notebook=True)
    show(Progress("runs (2 x 3 steps)", 0, 6))
    show(Progress("runs (2 x 3 steps)", 4, 6))
    show(Progress("replaying to localize"))
    show.close()
    text = stream.getvalue()
    assert PREFIX not in text and not in_notebook()  # pytest is no kernel
    if importlib.util.find_spec("ipywidgets") is None:  # the text bar, redrawn in place
        assert "audit: runs (2 x 3 steps)" in text and "4/6" in text


def test_runs_of_variance_and_compare_are_one_bar_and_a_log_line_each():
    from types import SimpleNamespace

    from audit.probes.variance.engine import execute

    def runner(runs, pool_opts, on_done, stop):  # the engine's runs, finished as a pool would
        outs = [SimpleNamespace(spec=SimpleNamespace(group=g, seed=0), status=s, report={})
                for g, s in (("a", "ok"), ("b", "crashed"))]
        for out in outs:
            on_done(out)
        return outs

    log, tty = io.StringIO(), io.StringIO()
    for stream, is_tty in ((log, False), (tty, True)):
        show = ProgressDisplay(stream=stream, tty=is_tty)
        execute([None] * 3, None, show, runner=runner)
        show.close()
    assert [x.rsplit(" at ", 1)[0] for x in log.getvalue().splitlines()] == [
        f"{PREFIX} run 1 of 3 (a seed 0: ok)", f"{PREFIX} run 2 of 3 (b seed 0: crashed)"]
    assert "audit: 3 runs" in tty.getvalue() and "2/3" in tty.getvalue() and PREFIX not in tty.getvalue()


# --------------------------------------------------------------------------- in a real kernel

#: A lesson's exercise: the model and its builders in cells; a generator the seed does not
#: reach (cell 3, line 2); audits of every kind that runs fresh processes.
CELLS = [
    "import json\nimport numpy as np\nimport torch\nfrom torch import nn\nimport audit\n"
    "from audit.probes.errors import UsageError",
    "class Net(nn.Module):\n"
    "    def __init__(self, width=16):\n"
    "        super().__init__()\n"
    "        self.hidden = nn.Linear(8, width)\n"
    "        self.out = nn.Linear(width, 3)\n\n"
    "    def forward(self, x):\n"
    "        return self.out(torch.relu(self.hidden(x)))\n\n"
    "def batches(x, y):\n"
    "    return [(x[i:i + 16], y[i:i + 16]) for i in range(0, len(x), 16)]\n\n"
    "def build(width=16):\n"
    "    return {'model': Net(width), 'data': batches(torch.randn(64, 8), torch.randint(0, 3, (64,)))}",
    "def build_noisy():\n"
    "    rng = np.random.default_rng()\n"
    "    x = torch.tensor(rng.normal(size=(64, 8)), dtype=torch.float32)\n"
    "    return {'model': Net(), 'data': batches(x, torch.randint(0, 3, (64,)))}",
    "noisy = audit.run('determinism', build_noisy, steps=2)\nnoisy",
    "clean = audit.run('determinism', build, steps=2)",
    "spread = audit.run('variance', build, seeds=2, steps=3, sources=['init'], jobs=2)\n"
    "wide = lambda: build(width=32)\n"
    "versus = audit.run('compare', build, candidate=wide, seeds=3, steps=3, jobs=2)",
    "stream = (i for i in range(100))\nnext(stream)\n\n"
    "def build_streamed():\n    return Net(8 + next(stream))\n\n"
    "try:\n    audit.run('determinism', build_streamed, steps=2)\n    refused = None\n"
    "except UsageError as exc:\n    refused = str(exc)",
    "print(json.dumps({'noisy': json.loads(audit.to_json(noisy)), 'clean': json.loads(audit.to_json(clean)),\n"
    "                  'spread': json.loads(audit.to_json(spread)), 'versus': json.loads(audit.to_json(versus)),\n"
    "                  'refused': refused}))",
]


def _execute(nb, cwd: str) -> None:
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=1800,
                                     resources={"metadata": {"path": cwd}})
    client.execute(env=env)


@pytest.fixture(scope="module")
def lesson(tmp_path_factory):
    """The exercise notebook executed: ``(notebook, the summary its last cell prints)``."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    _execute(nb, str(tmp_path_factory.mktemp("lesson")))
    printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.get("name") == "stdout")
    return nb, json.loads(printed)


@pytest.mark.slow
def test_a_generator_the_seed_does_not_reach_is_found_in_its_cell(lesson):
    noisy = lesson[1]["noisy"]
    assert noisy["verdict"] == "nondeterministic" and noisy["first_divergence"]["stage"] == "data"
    top = noisy["causes"][0]
    assert top["source"] == "unseeded_rng" and top["confirmed"] and top["where"] == "cell 3, line 2"
    assert noisy["target"] == "build_noisy (cell 3, line 1)"


@pytest.mark.slow
def test_a_clean_builder_from_a_cell_passes(lesson):
    clean = lesson[1]["clean"]
    assert clean["verdict"] == "deterministic" and clean["causes"] == []


@pytest.mark.slow
def test_the_result_renders_inline_and_progress_prints_no_lines(lesson):
    nb = lesson[0]
    shown = [o for o in nb.cells[3].outputs if o["output_type"] == "execute_result"]
    assert shown and "text/html" in shown[0]["data"]
    said = "".join(o.get("text", "") for c in nb.cells for o in c.outputs if o.get("name") == "stderr")
    assert "audit progress:" not in said


@pytest.mark.slow
def test_variance_and_compare_take_cell_defined_targets(lesson):
    spread, versus = lesson[1]["spread"], lesson[1]["versus"]
    assert len(spread["metrics"]["loss"]["sources"]["init"]["values"]) == 2
    assert versus["verdict"] in COMPARE_VERDICTS and len(versus["deltas"]) == 3
    assert versus["b"]["target"].startswith("<lambda> (cell 6, line 2)")


@pytest.mark.slow
def test_an_unshippable_object_is_refused_in_one_line(lesson):
    refused = lesson[1]["refused"]
    assert refused and "\n" not in refused and "build_streamed -> stream (a generator)" in refused


@pytest.mark.slow
def test_the_tutorial_runs_top_to_bottom(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(os.path.join(DOCS, "tutorial.ipynb"), as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code")  # not committed
    _execute(nb, str(tmp_path))
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o["output_type"] == "error"]
    assert not errors
