"""CUDA paths: atomic-add kernels and cuDNN autotuning are found and fixed on a GPU; the CUDA
op scan made on any device matches what PyTorch reports on the GPU. Skipped where torch sees
no GPU (the whole module runs in about a minute on one GPU)."""
import os
import warnings

import pytest
import torch

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

TARGETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "targets")


def test_index_add_backward_is_found_and_proven_on_cuda():
    from audit.probes.run.launcher import RunOptions
    from audit.probes.determinism.orchestrate import audit_determinism

    r = audit_determinism(RunOptions(
        target=os.path.join(TARGETS, "cuda_index_add.py") + ":build", steps=3, device="cuda",
        cwd=TARGETS))
    assert r.device.startswith("cuda")
    assert r.environment["flags"]["cudnn_benchmark"] is True
    assert r.verdict == "nondeterministic"
    d = r.first_divergence
    assert d.stage == "backward" and d.module == "gather" and d.tensor == "gather.table"
    assert r.causes[0].source in ("nondeterministic_algorithm", "cudnn_benchmark")
    assert r.causes[0].confirmed
    # the target turns cuDNN autotuning on: that knob stays in the attribution with --device cuda
    tried = [t.knob for t in r.knob_trials]
    assert "cudnn_benchmark_off" in tried or r.causes[0].source == "cudnn_benchmark"
    # the op scan of the first run names the atomic backward and its module, confirmed there
    ops = {(o.op, tuple(o.passes)): o for o in r.cuda_ops.ops}
    found = ops[("aten::index_add", ("backward",))]
    assert found.modules == ["gather"] and found.category == "made_deterministic"
    assert r.cuda_ops.confirmed_on and r.cuda_ops.device.startswith("cuda")
    assert any(lib.library == "cudnn" and "conv" in lib.modules for lib in r.cuda_ops.libraries)


MODELS = os.path.join(TARGETS, "cuda_ops_models.py")


def _warn_only_kernels(setup, batch) -> set:
    """The kernels PyTorch names in its warnings for one step under warn_only=True."""
    from audit.probes.run.training import compute_loss

    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            setup.model.zero_grad()
            compute_loss(setup, batch).backward()
    finally:
        torch.use_deterministic_algorithms(False)
    return {str(w.message).split(" ", 1)[0] for w in caught
            if "does not have a deterministic implementation" in str(w.message)}


@pytest.mark.parametrize("name", ["interpolate", "embedding_bag", "reflection_pad",
                                  "adaptive_pool", "index_add", "scatter_add", "plain"])
def test_scan_matches_warn_only_warnings_on_the_gpu(name):
    from audit.probes.determinism import cuda_ops
    from audit.probes.run.target import load_target
    from audit.probes.run.training import cycle_batches, to_device

    torch.manual_seed(0)
    device = torch.device("cuda")
    setup = load_target(f"{MODELS}:build_{name}")
    setup.model.to(device)
    _, batch = next(cycle_batches(setup.data, 1))
    batch = to_device(batch, device)
    if name == "adaptive_pool":  # LazyLinear: materialize before the scan
        setup.model(batch[0])
    scan = cuda_ops.scan(setup, batch, device)
    cuda_ops.confirm(setup, batch, scan, device)
    kernels = _warn_only_kernels(setup, batch)
    raising = [o for o in scan.ops if o.category == "raises"]
    assert all(o.confirmed for o in raising), scan.ops
    assert not [o for o in scan.ops if o.entry == "reported"], "PyTorch reported ops the table lacks"
    assert {o.warning for o in raising} == kernels
    if name == "plain":
        assert not scan.ops and not kernels


def test_fingerprints_on_cuda_match_their_properties():
    from audit.probes.run import fingerprint as fp

    t = torch.randn(4096, device="cuda")
    base = fp.gather([fp.fingerprint(t)])[0]
    u = t.clone()
    u.view(torch.int32)[7] += 1
    assert fp.gather([fp.fingerprint(u)])[0] != base


def test_ddp_under_nccl_traces_every_rank_on_its_gpu():
    """The NCCL path of ``--nproc``: one rank per GPU (two where there are two), the tool's own
    DDP wrapping on each rank's device, fingerprints gathered on the device; the clean trainer's
    replicas agree."""
    from audit.probes.determinism.distributed import audit_distributed
    from audit.probes.run.launcher import RunOptions

    nproc = min(torch.cuda.device_count(), 2)
    opts = RunOptions(target=os.path.join(TARGETS, "ddp_faults.py") + ":build", steps=4,
                              runs=2, jobs=2, cwd=TARGETS, device="cuda", attribute=False)
    r = audit_distributed(opts, nproc, timeout=120)
    assert r.error is None, r.error
    assert r.device.startswith("cuda")
    assert r.replicas is not None and r.replicas.verdict == "consistent"
    assert r.verdict in ("deterministic", "nondeterministic")  # cuBLAS/NCCL may reorder sums
    assert r.steps == 4
