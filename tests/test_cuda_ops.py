"""The CUDA op scan: documented CUDA-nondeterministic ops found in one CPU step, each with its
modules, pass and category; the table covers the installed torch's docstring; the gate check;
the JSON field; the reports' sections; and the audit runs the scan in its first run."""
import os
import re

import pytest
import torch

from audit.probes.determinism import cuda_ops, cuda_ops_table as table
from audit.probes.determinism.cuda_ops_check import cuda_ops_check
from audit.probes.results import DeterminismResult
from audit.probes.results.cuda_ops import CudaOp, CudaOpsScan
from audit.probes.run.target import load_target

TARGETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "targets")
MODELS = os.path.join(TARGETS, "cuda_ops_models.py")


def scan_of(name: str) -> CudaOpsScan:
    torch.manual_seed(0)
    setup = load_target(f"{MODELS}:build_{name}")
    return cuda_ops.scan_training(setup, torch.device("cpu"))


def listed(scan: CudaOpsScan) -> set:
    return {(o.op, o.category, tuple(o.passes), tuple(o.modules)) for o in scan.ops}


EXPECTED = {
    "interpolate": {("aten::upsample_bilinear2d_backward", "raises", ("backward",), ("up",))},
    "parent_interpolate": {("aten::upsample_bilinear2d_backward", "raises", ("backward",), ("",))},
    "index_add": {("aten::index_add_", "made_deterministic", ("forward",), ("acc",))},
    "scatter_add": {("aten::scatter_add_", "made_deterministic", ("forward",), ("acc",))},
    "embedding_bag": {("aten::_embedding_bag_backward", "raises", ("backward",), ("bag",))},
    "reflection_pad": {("aten::reflection_pad2d_backward", "raises", ("backward",), ("pad",))},
    "adaptive_pool": {("aten::_adaptive_avg_pool2d_backward", "raises", ("backward",), ("pool",))},
    "global_pool": set(),
    "plain": set(),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_scan_lists_the_documented_ops_with_their_modules(name):
    scan = scan_of(name)
    assert scan.error is None
    assert listed(scan) == EXPECTED[name]


def test_index_select_backward_is_found_in_the_backward_and_mapped_to_its_module():
    from torch import nn
    from audit.probes.run.training import TrainingSetup

    class Gather(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Parameter(torch.randn(16, 4))

        def forward(self, idx):
            return self.table.index_select(0, idx)

    model = nn.Sequential(Gather(), nn.Linear(4, 3))
    setup = TrainingSetup(model=model, data=[(torch.tensor([1, 1, 2, 5]), torch.tensor([0, 1, 2, 0]))])
    scan = cuda_ops.scan_training(setup, torch.device("cpu"))
    assert listed(scan) == {("aten::index_add", "made_deterministic", ("backward",), ("0",))}
    assert scan.ops[0].entry == "index_select_backward"


def test_plain_model_uses_cudnn_and_cublas_which_are_settings_not_ops():
    scan = scan_of("plain")
    libs = {lib.library: lib for lib in scan.libraries}
    assert libs["cudnn"].modules == ["features.0"]
    assert "aten::convolution_backward" in libs["cudnn"].ops
    assert libs["cublas"].modules == ["head"]
    assert libs["cublas"].needed == scan.cublas_workspace_required


def test_scan_leaves_no_hooks_and_no_gradients_behind():
    setup = load_target(f"{MODELS}:build_interpolate")
    cuda_ops.scan_training(setup, torch.device("cpu"))
    for module in setup.model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
    assert all(p.grad is None for p in setup.model.parameters())


def test_a_step_that_raises_gives_a_scan_with_its_error():
    from torch import nn
    from audit.probes.run.training import TrainingSetup

    setup = TrainingSetup(model=nn.Linear(4, 3), data=[(torch.randn(2, 5), torch.tensor([0, 1]))])
    scan = cuda_ops.scan_training(setup, torch.device("cpu"))
    assert scan.error and scan.error.startswith("RuntimeError") and not scan.ops


def test_confirming_pass_ties_pytorch_reports_to_op_and_module():
    """MaxUnpool2d is reported on the CPU too, so the confirming pass runs here."""
    setup = load_target(f"{MODELS}:build_unpool")
    _, batch = next(iter(enumerate(setup.data)))
    scan = cuda_ops.scan(setup, batch, torch.device("cpu"))
    assert listed(scan) == {("aten::max_unpool2d", "raises", ("forward",), ("unpool",))}
    cuda_ops.confirm(setup, batch, scan, torch.device("cpu"))
    (op,) = scan.ops
    assert op.confirmed is True and op.warning
    assert not torch.are_deterministic_algorithms_enabled()


def _bullets(doc: str) -> list:
    """(category, API names) of each bullet in the docstring's two lists."""
    head = "The following normally-nondeterministic operations will "
    made = doc.split(head + "act")[1].split(head)[0]
    raises = doc.split(head + "throw")[1].split("In addition")[0]
    out = []
    for category, text in (("made_deterministic", made), ("raises", raises)):
        for bullet in re.split(r"\n\s*\* ", text)[1:]:
            out.append((category, _api_names(bullet.split("\n")[0])))
    return out


def _api_names(text: str) -> set:
    """``torch.nn.ReflectionPad2d`` -> ``ReflectionPad`` (dimension suffixes dropped)."""
    return {re.sub(r"\d+d$", "", name.split(".")[-1]) for name in re.findall(r"torch\.[\w.]+", text)}


def test_table_covers_every_bullet_of_the_installed_docstring():
    doc = torch.use_deterministic_algorithms.__doc__
    if doc is None or "normally-nondeterministic operations will throw" not in doc:
        pytest.skip("this torch's docstring does not list the operations")
    bullets = _bullets(doc)
    assert len(bullets) > 30
    known = {}
    for entry in table.ENTRIES:
        for name in _api_names(entry.doc):
            known.setdefault(name, set()).add(entry.category)
    missing = [(c, names) for c, names in bullets
               if not any(c in known.get(n, set()) for n in names)]
    assert not missing, f"bullets with no entry in cuda_ops_table: {missing}"


def test_every_entry_names_aten_ops_that_exist():
    for entry in table.ENTRIES:
        assert entry.category in table.CATEGORIES
        assert entry.ops or entry.covered_by
        for op in entry.ops:
            assert hasattr(torch.ops.aten, op), (entry.key, op)


def _sample(ops) -> DeterminismResult:
    scan = CudaOpsScan(torch="2.14.1", device="cpu", source=table.SOURCE, ops=ops)
    return DeterminismResult(verdict="deterministic", runs=2, steps=3, seed=0, device="cpu",
                             cuda_ops=scan)


RAISING = CudaOp(op="aten::reflection_pad2d_backward", entry="reflection_pad_backward",
                 doc=table.BY_KEY["reflection_pad_backward"].doc, category="raises",
                 passes=["backward"], modules=["<b>pad</b>"], count=1)


def test_check_warns_by_default_and_fails_when_asked():
    result = _sample([RAISING])
    warn = cuda_ops_check(result)
    assert warn.passed and "reflection_pad2d_backward" in warn.message
    fail = cuda_ops_check(result, "fail")
    assert not fail.passed and fail.fix
    assert cuda_ops_check(_sample([]), "fail").passed
    assert cuda_ops_check(DeterminismResult("deterministic", 2, 3, 0, "cpu")) is None
    with pytest.raises(ValueError):
        cuda_ops_check(result, "loud")


def test_json_field_round_trips_and_is_absent_without_a_scan():
    result = _sample([RAISING])
    data = result.to_dict()
    assert data["cuda_ops"]["ops"][0]["category"] == "raises"
    assert DeterminismResult.from_dict(data).cuda_ops == result.cuda_ops
    assert "cuda_ops" not in DeterminismResult("deterministic", 2, 3, 0, "cpu").to_dict()


def test_reports_show_the_scan_and_escape_module_names():
    from audit.reports.html import determinism_html
    from audit.reports.terminal import determinism_summary

    result = _sample([RAISING])
    text = determinism_summary(result)
    assert "Ops nondeterministic on CUDA" in text and "aten::reflection_pad2d_backward" in text
    page = determinism_html(result, charts=False)
    assert 'id="cuda-ops"' in page and "<b>pad</b>" not in page
    assert "&lt;b&gt;pad&lt;/b&gt;" in page


def test_audit_scans_the_first_run():
    from audit.probes.run.launcher import RunOptions
    from audit.probes.determinism.orchestrate import audit_determinism

    r = audit_determinism(RunOptions(target=f"{MODELS}:build_reflection_pad", runs=2,
                                             steps=1, device="cpu", cwd=TARGETS))
    assert r.verdict == "deterministic"
    assert listed(r.cuda_ops) == EXPECTED["reflection_pad"]


def test_a_kernel_cause_cites_the_scanned_ops_of_its_module():
    from audit.probes.determinism.cuda_ops_check import cite_scan
    from audit.probes.results import Cause

    causes = [Cause("nondeterministic_algorithm", True, "removed by deterministic algorithms", "fix"),
              Cause("unknown", False, "", "")]
    cite_scan(causes, _sample([RAISING]).cuda_ops, "<b>pad</b>")
    assert "aten::reflection_pad2d_backward" in causes[0].evidence and not causes[1].evidence
    cite_scan(causes[1:], _sample([RAISING]).cuda_ops, "other")
    assert not causes[1].evidence


def _script_trace(tmp_path, name: str, scan: bool) -> tuple:
    """``build_{name}`` trained for 3 steps as a script trains it, under the script hooks
    (with the op scan when ``scan``): the records, and the scan record's result."""
    from audit.probes.determinism.script_ops import StepScan
    from audit.probes.script.tracer import ScriptTracer
    from audit.probes.run.trace import TraceWriter, read_trace
    from audit.probes.run.training import compute_loss, cycle_batches

    torch.manual_seed(0)
    setup = load_target(f"{MODELS}:build_{name}")
    path = str(tmp_path / f"{name}-{scan}.trace")
    writer = TraceWriter(path)
    tracer = ScriptTracer(writer, 10)
    tracer.scan = StepScan(writer) if scan else None
    tracer.install()
    try:
        opt = torch.optim.SGD(setup.model.parameters(), lr=0.1)
        for _, batch in cycle_batches(setup.data, 3):
            opt.zero_grad()
            compute_loss(setup, batch).backward()
            opt.step()
    finally:
        tracer.uninstall()
        writer.close()
    records = read_trace(path)
    scans = [CudaOpsScan.from_dict(r["scan"]) for r in records if r["type"] == "cuda_ops"]
    return [r for r in records if r["type"] == "step"], scans


@pytest.mark.parametrize("name", ["interpolate", "parent_interpolate", "embedding_bag", "plain"])
def test_script_mode_scans_its_second_step_as_it_trains(tmp_path, name):
    steps, scans = _script_trace(tmp_path, name, scan=True)
    assert len(scans) == 1 and scans[0].error is None
    want = {(op, cat, passes, tuple(m.rpartition(".")[2] for m in mods))
            for op, cat, passes, mods in EXPECTED[name]}
    assert {(o, c, p, tuple(m.rpartition(".")[2] for m in ms))
            for o, c, p, ms in listed(scans[0])} == want
    plain_steps, none = _script_trace(tmp_path, name, scan=False)
    assert none == [] and len(steps) == len(plain_steps) == 3
    for a, b in zip(steps, plain_steps):  # recorded, the run trains exactly as unrecorded
        assert (a["grads"], a["params"], a["loss"]) == (b["grads"], b["params"], b["loss"])
