"""CUDA paths: atomic-add kernels and cuDNN autotuning are found and fixed on a GPU.
Skipped where torch sees no GPU."""
import os

import pytest
import torch

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

TARGETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "targets")


def test_index_add_backward_is_found_and_proven_on_cuda():
    from audit.probes.determinism.orchestrate import DeterminismOptions, audit_determinism

    r = audit_determinism(DeterminismOptions(
        target=os.path.join(TARGETS, "cuda_index_add.py") + ":build", steps=3, device="cuda",
        cwd=TARGETS))
    assert r.device.startswith("cuda")
    assert r.environment["flags"]["cudnn_benchmark"] is True
    assert r.verdict == "nondeterministic"
    d = r.first_divergence
    assert d.stage == "backward" and d.module == "gather" and d.tensor == "gather.table"
    assert r.causes[0].source in ("nondeterministic_algorithm", "cudnn_benchmark")
    assert r.causes[0].confirmed


def test_fingerprints_on_cuda_match_their_properties():
    from audit.probes import fingerprint as fp

    t = torch.randn(4096, device="cuda")
    base = fp.gather([fp.fingerprint(t)])[0]
    u = t.clone()
    u.view(torch.int32)[7] += 1
    assert fp.gather([fp.fingerprint(u)])[0] != base
