"""Training under observation: per-step fingerprints of everything that can part two runs.

:func:`run_traced` drives the target's training for a number of steps and writes a trace, one
JSON line per record, flushed as it goes (a run that crashes keeps what it measured):

* ``init``: every parameter before the first step;
* each ``step``: the batch (inputs and targets apart, and per sample, to tell order from
  content), the RNG states just before the forward pass (torch CPU and CUDA, NumPy's global,
  Python's ``random``), the loss, each parameter's gradient, each parameter after the update;
* in detail mode (the replay that localizes): every module call's input and output, the
  gradients flowing back through each module's output and input, the optimizer state, and,
  through a :class:`~probes.lockstep.Lockstep`, the tensors themselves for the magnitudes.

All fingerprints of a step are gathered with one host sync.
"""
from __future__ import annotations

import json
import pickle
import random
import time
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from probes import fingerprint as fp
from probes.training import TrainingSetup, compute_loss, cycle_batches, split_batch, to_device


class TraceWriter:
    """Appends JSON records to a file, flushing each (crash-safe by construction)."""

    def __init__(self, path: str):
        self.path = path
        self._fh = open(path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._fh.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def read_trace(path: str) -> list:
    """The records of a trace file; a torn last line (a killed run) is dropped."""
    records = []
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    records.append(json.loads(line))
                except ValueError:
                    break
    except FileNotFoundError:
        pass
    return records


def rng_fingerprints(device: torch.device) -> dict:
    """Digests of every global RNG state that training code commonly draws from."""
    states = {
        "torch_cpu": fp.bytes_fingerprint(torch.get_rng_state().numpy().tobytes()),
        "numpy": fp.bytes_fingerprint(pickle.dumps(np.random.get_state())),
        "python": fp.bytes_fingerprint(pickle.dumps(random.getstate())),
    }
    if device.type == "cuda" and torch.cuda.is_initialized():
        states["torch_cuda"] = fp.bytes_fingerprint(torch.cuda.get_rng_state(device).numpy().tobytes())
    return states


class ModuleRecorder:
    """Forward and backward fingerprints of every module call, in execution order.

    Forward: the fingerprint of a call's inputs (pre-hook) and outputs (hook). Backward:
    tensor hooks on each call's outputs and inputs record the gradient flowing back through
    them, in the order the backward pass produces them. Hooks are removed in ``close``.
    """

    def __init__(self, model: nn.Module, keep_outputs: bool = False):
        self.events: list = []  # [name, call, phase, fingerprint]
        self.outputs: dict = {}  # "name#call" -> output tensor (for the magnitudes)
        self.keep_outputs = keep_outputs
        self._calls: dict = {}
        self._handles: list = []
        self._names = {module: name for name, module in model.named_modules()}
        try:
            for module in self._names:
                self._handles.append(module.register_forward_pre_hook(self._pre))
                self._handles.append(module.register_forward_hook(self._post))
        except Exception:
            self.close()
            raise

    def reset(self) -> None:
        self.events = []
        self.outputs = {}
        self._calls = {}

    def _pre(self, module, args):
        name = self._names[module]
        call = self._calls.get(name, 0)
        self._calls[name] = call + 1
        tensors = _tensors(args)
        self.events.append([name, call, "in", _combined(tensors)])
        for i, t in enumerate(tensors):
            if t.requires_grad:
                t.register_hook(self._grad_hook(name, call, f"gin{i}"))

    def _post(self, module, args, output):
        name = self._names[module]
        call = self._calls.get(name, 1) - 1
        tensors = _tensors(output)
        self.events.append([name, call, "out", _combined(tensors)])
        if self.keep_outputs and tensors:
            self.outputs[f"{name}#{call}"] = tensors[0].detach().clone()
        for i, t in enumerate(tensors):
            if t.requires_grad:
                t.register_hook(self._grad_hook(name, call, f"gout{i}"))

    def _grad_hook(self, name, call, phase):
        def hook(grad):
            self.events.append([name, call, phase, fp.fingerprint(grad)])

        return hook

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _tensors(obj: Any) -> list:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in _tensors(item)]
    if isinstance(obj, dict):
        return [t for key in obj for t in _tensors(obj[key])]
    return []


def _combined(tensors: list):
    if not tensors:
        return 0
    if len(tensors) == 1:
        return fp.fingerprint(tensors[0])
    values = [fp.fingerprint(t) for t in tensors]
    if all(isinstance(v, int) for v in values):
        return sum((2 * i + 1) * v for i, v in enumerate(values))
    device = next(v.device for v in values if isinstance(v, torch.Tensor))
    return sum((2 * i + 1) * torch.as_tensor(v, device=device) for i, v in enumerate(values))


def optimizer_state_tensors(optimizer: torch.optim.Optimizer, params: list) -> list:
    """The optimizer's per-parameter state tensors, in parameter then key order."""
    out = []
    for p in params:
        state = optimizer.state.get(p, {})
        for key in sorted(state):
            value = state[key]
            if isinstance(value, torch.Tensor):
                out.append(value)
    return out


def run_traced(
    setup: TrainingSetup,
    steps: int,
    device: torch.device,
    writer: TraceWriter,
    detail: bool = False,
    lockstep=None,
    on_step: Optional[Callable[[int], None]] = None,
) -> int:
    """Train ``steps`` optimizer steps and trace them; returns the number of steps completed.

    ``detail`` adds module-level fingerprints and the optimizer state (the localizing replay);
    ``lockstep`` (detail mode) exchanges full tensors with the partner run for magnitudes.
    """
    model = setup.model.to(device)
    model.train()
    optimizer = setup.optimizer(model.parameters())
    named = [(n, p) for n, p in model.named_parameters()]
    params = [p for _, p in named]
    names = [n for n, _ in named]
    writer.write({"type": "params", "names": names,
                  "modules": [n for n, _ in model.named_modules()],
                  "shapes": [list(p.shape) for p in params]})
    init_fps = fp.gather([fp.fingerprint(p) for p in params])
    init_record = {"type": "init", "params": [fp.as_text(v) for v in init_fps]}
    if lockstep is not None:
        diffs = lockstep.exchange(-1, {"params": {n: p.detach() for n, p in named}})
        if diffs is not None:
            init_record["diffs"] = diffs
    writer.write(init_record)

    recorder = ModuleRecorder(model, keep_outputs=lockstep is not None) if detail else None
    done = 0
    try:
        for step, batch in cycle_batches(setup.data, steps):
            started = time.perf_counter()
            batch = to_device(batch, device)
            inputs, targets = split_batch(batch)
            rng = rng_fingerprints(device)
            if recorder is not None:
                recorder.reset()
            optimizer.zero_grad(set_to_none=True)
            loss = compute_loss(setup, batch)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise TypeError("the loss must be a scalar tensor; make 'loss' or 'step' return one")
            loss.backward()
            grads = [p.grad for p in params]
            grad_parts = [fp.fingerprint(g) if g is not None else 0 for g in grads]
            grad_copies = ({n: g.detach().clone() for n, g in zip(names, grads) if g is not None}
                           if lockstep is not None else None)
            optimizer.step()

            parts = [_combined(inputs), _combined(targets),
                     _rows(inputs), _rows(targets), fp.fingerprint(loss.detach()),
                     *grad_parts, *[fp.fingerprint(p) for p in params]]
            if detail:
                parts.append(_combined(optimizer_state_tensors(optimizer, params)))
                parts.extend(e[3] for e in recorder.events)
            values = fp.gather(parts)  # the step's one host sync
            n = len(params)
            record = {
                "type": "step", "step": step,
                "inputs": fp.as_text(values[0]), "targets": fp.as_text(values[1]),
                "inputs_rows": [fp.as_text(v) for v in _as_list(values[2])],
                "targets_rows": [fp.as_text(v) for v in _as_list(values[3])],
                "rng": rng,
                "loss": fp.as_text(values[4]),
                "loss_value": float(loss.detach().float().cpu()),
                "grads": [fp.as_text(v) if g is not None else None
                          for v, g in zip(values[5:5 + n], grads)],
                "params": [fp.as_text(v) for v in values[5 + n:5 + 2 * n]],
                "seconds": round(time.perf_counter() - started, 6),
            }
            if detail:
                record["optim"] = fp.as_text(values[5 + 2 * n])
                record["modules"] = [[e[0], e[1], e[2], fp.as_text(v)]
                                     for e, v in zip(recorder.events, values[6 + 2 * n:])]
            if lockstep is not None:
                tensors = {"inputs": inputs, "targets": targets, "grads": grad_copies,
                           "params": {n_: p.detach() for n_, p in named},
                           "outputs": recorder.outputs}
                diffs = lockstep.exchange(step, tensors)
                if diffs is not None:
                    record["diffs"] = diffs
            writer.write(record)
            done = step + 1
            if on_step is not None:
                on_step(done)
    finally:
        if recorder is not None:
            recorder.close()
    return done


def _rows(tensors: list):
    if not tensors:
        return []
    return fp.row_fingerprints(tensors[0]) if len(tensors) == 1 else [_combined(tensors)]


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]
