"""Sources of nondeterminism that act only sometimes, reported even when the runs agree.

Two runs can agree while the code holds a source that parts them on another day: a DataLoader
with workers and ``in_order=False`` (batches arrive in the order the workers finish), cuDNN
autotuning (the algorithm picked by timing), a generator the seed does not reach that the
compared steps drew from without parting the runs (one never drawn from is not a source).
:func:`can_act` says when the audit can make such a source act before it answers (varied worker
timing, :mod:`probes.run.jitter`);
:func:`sources` lists those still present, with place and fix, for the report, the JSON
(``latent_sources``) and the gate (:func:`check`).
"""
from __future__ import annotations

from typing import Any
from audit.probes.results import Check, DeterminismResult, LatentSource

JITTER_NOTE = ("the first runs agreed; rerun with DataLoader worker timing varied (random "
               "delays in the workers), they parted")
LOADER_FIX = ("DataLoader(..., in_order=True)  # batches in sampler order whatever the workers' "
              "timing\n# or num_workers=0")


def unordered_loaders(observed: dict[str, Any]) -> list[Any]:
    """Loaders with workers whose batches come in the order the workers finish."""
    return [lo for lo in observed.get("loaders") or []
            if lo.get("num_workers") and lo.get("in_order") is False]


def can_act(observed: dict[str, Any]) -> bool:
    return bool(unordered_loaders(observed))


def sources(observed: dict[str, Any], escapes: list[Any], device: str, jittered: bool) -> list[Any]:
    """The latent sources of a run whose comparison found no divergence; ``escapes`` are
    those whose generators were drawn from."""
    from audit.probes.determinism.attribute import generator_fix, made_text  # torch: not for the gate

    out = []
    tried = ("rerun with varied worker timing, the runs still agreed" if jittered else "")
    for loader in unordered_loaders(observed):
        out.append(LatentSource(
            "dataloader", loader.get("where"),
            f"a DataLoader with num_workers={loader['num_workers']} and in_order=False yields "
            "batches in the order its workers finish: the order the runs got agreed this time",
            LOADER_FIX, tried))
    if observed.get("cudnn_benchmark") and device.startswith("cuda"):
        out.append(LatentSource(
            "cudnn_benchmark", observed["cudnn_benchmark"],
            "cuDNN autotuning is on: it picks convolution algorithms by timing them, so another "
            "run (or machine load) can pick another one with other rounding",
            "torch.backends.cudnn.benchmark = False"))
    for esc in escapes:  # those drawn from: one that never was cannot act
        out.append(LatentSource(
            "unseeded_rng", esc.where,
            f"{made_text(esc)} is {esc.detail or 'not seeded'}; the compared steps drew from it "
            "without parting the runs, later ones may",
            generator_fix(esc)))
    return out


#: How the gate treats latent sources (``[tool.audit.determinism] latent = "fail"``).
LEVELS = ("warn", "fail")


def check(result: DeterminismResult) -> Check:
    """The gate's ``no latent sources`` check: when a source that acts only sometimes is
    present it warns (passes with a message), or fails with ``result.latent_level == "fail"``."""
    found = result.latent_sources
    if not found:
        return Check("determinism", "no latent sources", True,
                     "no source that acts only sometimes was seen")
    first = found[0]
    names = ", ".join(sorted({s.source for s in found}))
    message = (f"{len(found)} source(s) of nondeterminism that act only sometimes ({names}); "
               f"first: {first.evidence}")
    warn = result.latent_level != "fail"
    return Check("determinism", "no latent sources", warn,
                 ("warning: " if warn else "") + message, first.fix, first.where)
