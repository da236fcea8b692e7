"""The pieces of training state a checkpoint may leave out, each one a knob of ``audit resume``.

The uninterrupted run saves every piece, at step K, next to the user's checkpoint (:func:`snapshot`); a
resumed run with a knob set restores that one piece after the user's ``load``
(:func:`restore`), so a knob that makes the resumed run match the uninterrupted one proves the
checkpoint lacks that piece. The data pieces are restored when the resumed pass opens
(:mod:`probes.resume.loader`).
"""
from __future__ import annotations

import copy
import random
from typing import Any, Optional

import numpy as np
import torch

from audit.probes.resume import loader
from audit.probes.run.training import LiveObjects, TrainingSetup

#: Knob -> the contract's resume source it proves.
PIECES = {
    "torch_rng": "rng_state",
    "numpy_python_rng": "rng_state",
    "data_position": "data_position",
    "worker_seeds": "worker_rng",
    "scheduler": "scheduler",
    "optimizer_state": "optimizer_state",
    "grad_scaler": "grad_scaler",
    "buffers": "buffers",
}


def find_scalers(setup: TrainingSetup) -> list[Any]:
    """``torch.amp.GradScaler`` objects the target's ``step``/``loss`` callables hold (closure
    cells, their module's globals, a bound method's object)."""
    found: list[Any] = []
    for fn in (setup.step, setup.loss):
        if fn is None:
            continue
        owner = getattr(fn, "__self__", None)
        values = list(vars(owner).values()) if owner is not None and hasattr(owner, "__dict__") else []
        fn = getattr(fn, "__func__", fn)
        values += [c.cell_contents for c in (getattr(fn, "__closure__", None) or ())
                   if _filled(c)]
        values += list((getattr(fn, "__globals__", None) or {}).values())
        found += [v for v in values if isinstance(v, torch.amp.GradScaler)
                  and not any(v is f for f in found)]
    return found


def _filled(cell: Any) -> bool:
    try:
        _ = cell.cell_contents  # an empty cell raises
    except ValueError:
        return False
    return True


def snapshot(live: LiveObjects, scalers: list[Any], record: Optional[loader.PassRecord]) -> dict[str, Any]:
    """Every piece, as the uninterrupted run has it now (a ``torch.save``-able dict)."""
    snap = {
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
        "numpy_rng": np.random.get_state(),
        "python_rng": random.getstate(),
        "scheduler": live.scheduler.state_dict() if live.scheduler is not None else None,
        "optimizer": copy.deepcopy(live.optimizer.state_dict()),
        "scalers": [s.state_dict() for s in scalers],
        "buffers": {n: b.detach().clone() for n, b in live.model.named_buffers()},
        "pass": None,
    }
    if record is not None:
        snap["pass"] = {"epoch": record.epoch, "seed_state": record.seed_state, "order": record.order}
    return snap


def pass_record(snap: dict[str, Any]) -> Optional[loader.PassRecord]:
    data = snap.get("pass")
    return loader.PassRecord(data["epoch"], data["seed_state"], data["order"]) if data else None


def restore(knob: str, snap: dict[str, Any], live: LiveObjects, scalers: list[Any]) -> None:
    """Put one piece back as the uninterrupted run had it (data knobs: see :mod:`loader`)."""
    if knob == "torch_rng":
        torch.set_rng_state(snap["torch_rng"])
        if snap["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(snap["cuda_rng"])
    elif knob == "numpy_python_rng":
        np.random.set_state(snap["numpy_rng"])
        random.setstate(snap["python_rng"])
    elif knob == "scheduler" and live.scheduler is not None:
        live.scheduler.load_state_dict(snap["scheduler"])
    elif knob == "optimizer_state":
        live.optimizer.load_state_dict(snap["optimizer"])
    elif knob == "grad_scaler":
        for scaler, state in zip(scalers, snap["scalers"]):
            scaler.load_state_dict(state)
    elif knob == "buffers":
        buffers = dict(live.model.named_buffers())
        with torch.no_grad():
            for name, value in snap["buffers"].items():
                if name in buffers:
                    buffers[name].copy_(value.to(buffers[name].device))


def known(knobs: Any) -> list[Any]:
    """``knobs`` checked against :data:`PIECES` (the spec comes from our own orchestrator)."""
    bad = [k for k in knobs if k not in PIECES]
    if bad:
        raise ValueError(f"unknown resume knob(s) {bad}")
    return list(knobs)
