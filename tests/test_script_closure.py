"""Script mode on ``optimizer.step(closure)``: forward and backward run inside the step.

Lightning's automatic optimization, LBFGS and any loop that passes a closure run the model and
its backward pass inside ``optimizer.step``. The tracer reads such a step after its closure:
the loss is the closure's return value and the gradients are those its backward pass left
(every evaluation's, for an optimizer that evaluates it several times). Scripts in the shape of
Lightning's loop (``opt.step(closure)`` with ``zero_grad``, forward, backward inside the
closure) are audited unmodified through ``audit.cli.main`` with one planted backward fault
each, and the tracer is checked in-process: a closure loop's trace is the plain loop's.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audit import cli

LOADER = '''\
import os

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
loader = DataLoader(TensorDataset(torch.randn(64, 8), torch.randint(0, 3, (64,))),
                    batch_size=16, shuffle=True)
'''

# The loop as Lightning's automatic optimization runs it: the closure clears the gradients,
# runs training_step and the backward pass, and returns the loss; step() calls it.
CLOSURE_LOOP = '''
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for epoch in range(3):
    for xb, yb in loader:
        def closure():
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            return loss
        opt.step(closure=closure)
'''

HOOK_TRAIN = LOADER + '''

def jitter(module, grad_input, grad_output):
    """The gradient sent back through the module, scaled by an unseeded factor."""
    return tuple(g * (1 + 1e-3 * os.urandom(1)[0] / 255) if g is not None else None
                 for g in grad_input)


model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 3))
model[2].register_full_backward_hook(jitter)  # PLANTED
''' + CLOSURE_LOOP

CLEAN_TRAIN = LOADER + '''
model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 3))
''' + CLOSURE_LOOP

ORDERED_TRAIN = LOADER + '''

class OrderedSum(torch.autograd.Function):
    """x @ w.T whose weight gradient adds the per-sample terms in the order a parallel kernel
    would finish them, unless deterministic algorithms are asked for."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x @ w.t()

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        order = list(range(x.shape[0]))
        if not torch.are_deterministic_algorithms_enabled():
            noise = os.urandom(len(order))
            order.sort(key=lambda i: noise[i])
        grad_w = torch.zeros_like(w)
        for i in order:
            grad_w += torch.outer(grad[i], x[i])
        return grad @ w, grad_w


class AtomicLinear(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in) / n_in ** 0.5)

    def forward(self, x):  # PLANTED
        return OrderedSum.apply(x, self.weight)


model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), AtomicLinear(32, 3))
''' + CLOSURE_LOOP

# LBFGS evaluates the closure several times per step; the fault fires only at the second
# evaluation of each step, after the first evaluation's forward and backward agreed.
LBFGS_TRAIN = '''\
import os

import torch
from torch import nn

torch.manual_seed(0)
x, y = torch.randn(32, 4), torch.randn(32, 1)
model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
evaluation = [0]


def late_jitter(grad):  # PLANTED
    return grad * (1 + 1e-3 * os.urandom(1)[0] / 255) if evaluation[0] % 3 == 2 else grad


model[2].weight.register_hook(late_jitter)
opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=3, history_size=5)
for step in range(4):
    def closure():
        evaluation[0] += 1
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss
    opt.step(closure)
'''

FILES = {"hook.py": HOOK_TRAIN, "clean.py": CLEAN_TRAIN, "ordered.py": ORDERED_TRAIN,
         "lbfgs.py": LBFGS_TRAIN}

# (options, script): the one that attributes a cause (knob trials) first.
AUDITS = {
    "ordered": ["--steps", "3"],
    "hook": ["--steps", "3", "--no-attribution"],
    "lbfgs": ["--steps", "2", "--no-attribution"],
    "clean": ["--steps", "3"],
}


def line_of(name: str, marker: str) -> int:
    return next(i for i, line in enumerate(FILES[name].splitlines(), 1) if marker in line)


def _audit(folder, name: str) -> tuple:
    out = folder / f"report-{name}"
    argv = ["determinism", "--jobs", "2", "--quiet", "--out", str(out), *AUDITS[name], "--",
            "python", str(folder / f"{name}.py")]
    code = cli.main(argv)
    report = out / "determinism.json"
    return code, json.loads(report.read_text()) if report.exists() else None


@pytest.fixture(scope="module")
def audits(tmp_path_factory, monkeypatch_module):
    folder = tmp_path_factory.mktemp("closure")
    for name, text in FILES.items():
        (folder / name).write_text(text)
    (folder / "pyproject.toml").write_text("[project]\nname = 'scripts'\n")
    monkeypatch_module.chdir(folder)
    monkeypatch_module.setenv("OMP_NUM_THREADS", "1")
    monkeypatch_module.setenv("PYTHONHASHSEED", "0")
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(_audit, folder, name) for name in AUDITS}
        return {name: f.result() for name, f in futures.items()}


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def _divergence(doc: dict) -> tuple:
    fd = doc["first_divergence"]
    return fd["step"], fd["stage"], fd["module"]


def test_a_closure_whose_backward_is_unseeded_parts_in_the_backward_pass(audits):
    code, doc = audits["hook"]
    assert code == 1 and doc["verdict"] == "nondeterministic"
    assert _divergence(doc) == (0, "backward", "2")
    assert doc["first_divergence"]["max_abs_diff"] > 0
    # the closure step was read after the closure: the run info says how
    assert "closure" in doc["detail"]["data"]
    timeline = {row["step"]: row["stages"] for row in doc["timeline"]}
    assert timeline[0]["forward"] == "agree" and timeline[0]["backward"] == "differ"


def test_the_knob_trials_confirm_a_backward_fault_inside_a_closure(audits):
    code, doc = audits["ordered"]
    assert code == 1
    fd = doc["first_divergence"]
    assert (fd["step"], fd["stage"], fd["module"], fd["tensor"]) == (0, "backward", "2", "2.weight")
    cause = doc["causes"][0]
    assert (cause["source"], cause["confirmed"]) == ("nondeterministic_algorithm", True)
    assert cause["where"] == f"ordered.py:{line_of('ordered.py', 'PLANTED')}"


def test_a_clean_closure_loop_passes(audits):
    code, doc = audits["clean"]
    assert code == 0 and doc["verdict"] == "deterministic"
    assert doc["first_divergence"] is None


def test_lbfgs_later_evaluations_are_read(audits):
    """The fault fires at the second evaluation of the step: the first evaluation's forward
    and backward agree, the step's gradients (every evaluation's) do not."""
    code, doc = audits["lbfgs"]
    assert code == 1
    assert _divergence(doc) == (0, "backward", "2")


# ------------------------------------------------------------------------------ in-process


def _tiny():
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(24, 5), torch.randint(0, 3, (24,)))
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)), DataLoader(data, batch_size=8)


def _traced(path, steps: int, train, detail: bool = False) -> list:
    from audit.probes.script.tracer import ScriptTracer, StopScript
    from audit.probes.run.trace import TraceWriter, read_trace

    writer = TraceWriter(str(path))
    tracer = ScriptTracer(writer, steps, detail=detail)
    tracer.install()
    try:
        with pytest.raises(StopScript):
            train()
    finally:
        tracer.uninstall()
        writer.close()
    return read_trace(str(path))


def _steps(records: list) -> list:
    return [r for r in records if r["type"] == "step"]


@pytest.mark.parametrize("detail", [False, True])
def test_a_closure_loop_is_traced_as_the_plain_loop(tmp_path, detail):
    """The same training through ``step(closure)`` and through backward-then-``step()``: every
    fingerprint of every step is the same (gradients, loss, outputs, module events)."""
    import torch
    from torch import nn

    def plain():
        model, loader = _tiny()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for _ in range(10):
            for x, y in loader:
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step()

    def with_closure():
        model, loader = _tiny()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for _ in range(10):
            for x, y in loader:
                def closure():
                    opt.zero_grad()
                    loss = nn.functional.cross_entropy(model(x), y)
                    loss.backward()
                    return loss
                opt.step(closure)

    a = _steps(_traced(tmp_path / "plain.trace", 4, plain, detail))
    b = _steps(_traced(tmp_path / "closure.trace", 4, with_closure, detail))
    keys = ["inputs", "targets", "fed", "loss", "loss_value", "outputs", "grads", "params",
            "start", "rng"] + (["modules", "optim"] if detail else [])
    assert len(a) == len(b) == 4
    for ra, rb in zip(a, b):
        assert {k: ra.get(k) for k in keys} == {k: rb.get(k) for k in keys}
    assert all(g is not None for g in b[0]["grads"])


def test_lbfgs_steps_have_the_first_evaluations_loss_and_every_evaluations_gradients(tmp_path):
    import torch
    from torch import nn

    from audit.probes.run.trace import read_trace

    returned, evaluations = [], []

    def train(max_iter: int):
        def run():
            torch.manual_seed(0)
            x, y = torch.randn(16, 3), torch.randn(16, 1)
            model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
            opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=max_iter)
            for _ in range(5):
                count = [0]

                def closure():
                    count[0] += 1
                    opt.zero_grad()
                    loss = nn.functional.mse_loss(model(x), y)
                    loss.backward()
                    return loss
                returned.append(float(opt.step(closure).detach()))
                evaluations.append(count[0])
        return run

    several = _steps(_traced(tmp_path / "lbfgs.trace", 3, train(4)))
    assert min(evaluations) > 1  # LBFGS did evaluate the closure several times per step
    # (the third step ends the run in its post-step hook: its value is never returned)
    assert len(returned) == 2
    assert [r["loss_value"] for r in several[:2]] == pytest.approx(returned, rel=1e-6)
    assert all(g is not None for r in several for g in r["grads"])
    env = next(r for r in read_trace(str(tmp_path / "lbfgs.trace")) if r["type"] == "env")
    assert "closure" in env["description"]
    # with one evaluation per step the same first step reads the same first evaluation's
    # gradients; with four, the later evaluations' count too
    returned.clear()
    once = _steps(_traced(tmp_path / "once.trace", 1, train(1)))
    assert once[0]["loss_value"] == several[0]["loss_value"]
    assert once[0]["grads"] != several[0]["grads"]


def test_an_optimizer_that_never_calls_its_closure_still_has_its_gradients(tmp_path):
    import torch
    from torch import nn

    class Lazy(torch.optim.SGD):
        def step(self, closure=None):  # ignores the closure
            return super().step()

    def train():
        model, loader = _tiny()
        opt = Lazy(model.parameters(), lr=0.1)
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step(lambda: None)

    steps = _steps(_traced(tmp_path / "lazy.trace", 2, train))
    assert len(steps) == 2 and all(g is not None for r in steps for g in r["grads"])


# ------------------------------------------------------------------------------ target mode


def _lbfgs_target_trace(path, jitter: bool) -> list:
    """Two steps of an LBFGS target traced by target mode's loop; with ``jitter``, the
    gradient of ``2.weight`` is scaled by an unseeded factor at the second evaluation only."""
    import os

    import torch
    from torch import nn

    from audit.probes.run.trace import TraceWriter, read_trace, run_traced
    from audit.probes.run.training import TrainingSetup

    torch.manual_seed(0)
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    backward = [0]

    def late(grad):
        backward[0] += 1
        return grad * (1 + 1e-3 * os.urandom(1)[0] / 255) if jitter and backward[0] == 2 else grad

    model[2].weight.register_hook(late)
    setup = TrainingSetup(model, [(x, y)] * 2,
                          optimizer=lambda params: torch.optim.LBFGS(params, lr=0.5, max_iter=3))
    writer = TraceWriter(str(path))
    try:
        done = run_traced(setup, 2, torch.device("cpu"), writer)
    finally:
        writer.close()
    assert done == 2 and backward[0] > 2  # LBFGS was given a closure and evaluated it again
    return read_trace(str(path))


def test_target_mode_gives_lbfgs_a_closure_and_reads_every_evaluation(tmp_path):
    from audit.probes.run.compare import first_parting

    clean = [_lbfgs_target_trace(tmp_path / f"clean{i}.trace", False) for i in range(2)]
    assert first_parting(*clean) is None
    late = [_lbfgs_target_trace(tmp_path / f"late{i}.trace", True) for i in range(2)]
    parting = first_parting(*late)
    assert (parting.step, parting.stage) == (0, "backward")
    # the loop's own forward (the first evaluation) is the step's: it agrees
    a, b = (_steps(t)[0] for t in late)
    assert (a["outputs"], a["loss"]) == (b["outputs"], b["loss"])


@given(st.lists(st.lists(st.integers(0, 2 ** 63 - 1), min_size=3, max_size=3), min_size=1,
                max_size=6), st.data())
def test_a_change_at_any_evaluation_changes_the_steps_gradients(values, data):
    """combine_evaluations: one evaluation's fingerprints as they are; with several, changing
    any one gradient of any evaluation changes that gradient's combined fingerprint only."""
    from audit.probes.run.trace import combine_evaluations

    evaluations = [(list(v), 1, None) for v in values]
    grads, finite, copies = combine_evaluations(evaluations)
    assert (finite, copies) == (1, None)
    if len(values) == 1:
        assert grads == values[0]
    k = data.draw(st.integers(0, len(values) - 1))
    i = data.draw(st.integers(0, 2))
    changed = [list(v) for v in values]
    changed[k][i] += data.draw(st.integers(1, 2 ** 20))
    other, _, _ = combine_evaluations([(v, 1, None) for v in changed])
    assert [j for j in range(3) if other[j] != grads[j]] == [i]
