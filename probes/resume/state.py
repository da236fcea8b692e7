"""The training state right after a checkpoint: fingerprints, and what differs between two.

The uninterrupted run writes a ``state`` record after step K-1, the resumed run one right after
its load; the audit's stage ``state`` compares them: parameters, buffers, the optimizer's
per-parameter state and hyper-parameters, the scheduler and grad scalers. RNG streams are
compared where they are used, by the ``rng`` stage of each step.
"""
from __future__ import annotations

import json
from typing import Any

import torch

from audit.probes.run import fingerprint as fp
from audit.probes.results.resume import StateDifference
from audit.probes.run.trace import combine, rng_fingerprints
from audit.probes.run.training import LiveObjects
from audit.probes.results.records import Record


def _digest(value: Any) -> str:
    """A digest of host-side state (dicts of numbers, lists, tensors as values)."""
    def plain(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return fp.as_text(fp.gather([fp.fingerprint(v.detach())])[0])
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v if isinstance(v, (int, float, str, bool, type(None))) else repr(v)

    text = json.dumps(plain(value), sort_keys=True, default=repr)
    return fp.bytes_fingerprint(text.encode("utf-8"))


def _optimizer_parts(live: LiveObjects, params: list[Any]) -> list[Any]:
    parts = []
    for p in params:
        state = live.optimizer.state.get(p, {})
        parts.append(combine(fp.fingerprints([state[k] for k in sorted(state)
                                              if isinstance(state[k], torch.Tensor)])))
    return parts


def state_record(live: LiveObjects, scalers: list[Any], step: int, device: Any) -> dict[str, Any]:
    """The ``state`` trace record: the run's state before step ``step`` (with the global RNG
    states, which the ``state`` stage leaves to each step's ``rng`` stage but attribution
    uses to skip pieces the checkpoint already restores)."""
    named = list(live.model.named_parameters())
    buffers = list(live.model.named_buffers())
    params = [p for _, p in named]
    parts = fp.fingerprints(params + [b for _, b in buffers]) + _optimizer_parts(live, params)
    values = [fp.as_text(v) for v in fp.gather(parts)]
    n, m = len(params), len(buffers)
    groups = [{k: v for k, v in g.items() if k != "params"} for g in live.optimizer.param_groups]
    return {
        "type": Record.STATE, "step": step,
        "params": dict(zip([name for name, _ in named], values[:n])),
        "buffers": dict(zip([name for name, _ in buffers], values[n:n + m])),
        "optim": dict(zip([name for name, _ in named], values[n + m:])),
        "optim_groups": _digest(groups),
        "scheduler": _digest(live.scheduler.state_dict()) if live.scheduler is not None else None,
        "scalers": [_digest(s.state_dict()) for s in scalers],
        "rng": rng_fingerprints(device),
    }


def _module(name: str) -> str:
    return name.rpartition(".")[0]


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[Any]:
    """What differs between two ``state`` records, in the order a step would meet it."""
    out = []
    for key, piece in (("params", "parameter"), ("buffers", "buffer"), ("optim", "optimizer state")):
        left, right = a.get(key) or {}, b.get(key) or {}
        for name in list(left) + [n for n in right if n not in left]:
            if left.get(name) != right.get(name):
                out.append(StateDifference(piece, name, _module(name)))
    for key, piece in (("optim_groups", "optimizer settings"), ("scheduler", "scheduler"),
                       ("scalers", "grad scaler")):
        if a.get(key) != b.get(key):
            out.append(StateDifference(piece))
    return out


#: Knob -> the ``state`` record keys whose agreement makes the knob moot.
KNOB_KEYS = {
    "torch_rng": ("rng.torch_cpu", "rng.torch_cuda"),
    "numpy_python_rng": ("rng.numpy", "rng.python"),
    "scheduler": ("scheduler",),
    "optimizer_state": ("optim", "optim_groups"),
    "grad_scaler": ("scalers",),
    "buffers": ("buffers",),
}


def _get(rec: dict[str, Any], key: str) -> Any:
    head, _, tail = key.partition(".")
    value = rec.get(head)
    return (value or {}).get(tail) if tail else value


def moot(a: dict[str, Any], b: dict[str, Any]) -> set[Any]:
    """Knobs whose piece already agrees right after the load (restoring it changes nothing)."""
    if not a or not b:
        return set()
    return {knob for knob, keys in KNOB_KEYS.items()
            if all(_get(a, k) == _get(b, k) for k in keys)}
