"""Training under observation: per-step fingerprints of everything that can part two runs.

:func:`run_traced` drives the target's training for a number of steps and writes a trace, one
JSON line per record, flushed as it goes (a run that crashes keeps what it measured):

* ``init``: every parameter before the first step;
* each ``step``: the batch (inputs and targets apart, and per sample, to tell order from
  content), the RNG states just before the forward pass (torch CPU and CUDA, NumPy's global,
  Python's ``random``), the model's outputs and the loss (a forward divergence shows in the
  outputs even when the loss rounds alike), each parameter's gradient, each parameter after
  the update;
* in detail mode (the replay that localizes): every module call's input and output, the
  gradients flowing back through each module's output and input, the optimizer state, and,
  through a :class:`~audit.probes.run.lockstep.Lockstep`, the tensors themselves for the magnitudes.

All fingerprints of a step are gathered with one host sync (:func:`step_fields`, which
script mode's tracer, :mod:`probes.script.tracer`, shares).
"""
from __future__ import annotations

import json
import os
import pickle
import random
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from audit.probes.run import fingerprint as fp
from audit.probes.run.training import (LiveObjects, TrainingSetup, compute_loss, cycle_batches,
                                   make_scheduler, optimizer_step, split_batch, step_closure,
                                   tensors_in, to_device)
from audit.probes.results.records import Record

if TYPE_CHECKING:  # named for the annotation only; the child makes the Lockstep
    from torch.utils.hooks import RemovableHandle

    from audit.probes.run.lockstep import Lockstep


class TraceWriter:
    """Appends JSON records to a file, flushing each (crash-safe by construction)."""

    def __init__(self, path: str):
        self.path = path
        self._fh = open(path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def read_trace(path: str) -> list[Any]:
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


def rng_fingerprints(device: torch.device) -> dict[str, Any]:
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

    With a ``model``, its modules are hooked and events carry their names from
    ``model.named_modules()``. With ``model=None`` (script mode, where the models are not known
    until the first optimizer step) global hooks see every module of the process, and events
    carry the module object itself until the caller names it; other processes forked from this
    one (DataLoader workers) record nothing.
    """

    def __init__(self, model: Optional[nn.Module], keep_outputs: bool = False):
        self.events: list[Any] = []  # [name or module, call, phase, fingerprint]
        self.outputs: dict[Any, Any] = {}  # "name#call" (or (module, call)) -> output tensor (magnitudes)
        self.keep_outputs = keep_outputs
        self._calls: dict[str, Any] = {}
        self._handles: list[RemovableHandle] = []
        self._pid = os.getpid()
        self._names = None if model is None else {module: name for name, module in model.named_modules()}
        try:
            if model is None:
                self._handles.append(nn.modules.module.register_module_forward_pre_hook(self._pre))
                self._handles.append(nn.modules.module.register_module_forward_hook(self._post))
            else:
                assert self._names is not None  # made from the model just above
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

    def _key(self, module: nn.Module) -> Any:
        if self._names is not None:
            return self._names[module]
        return module if os.getpid() == self._pid else None

    def _pre(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        key = self._key(module)
        if key is None:
            return
        call = self._calls.get(key, 0)
        self._calls[key] = call + 1
        tensors = tensors_in(args)
        self.events.append([key, call, "in", _combined(tensors)])
        for i, t in enumerate(tensors):
            if t.requires_grad:
                t.register_hook(self._grad_hook(key, call, f"gin{i}"))

    def _post(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        key = self._key(module)
        if key is None:
            return
        call = self._calls.get(key, 1) - 1
        tensors = tensors_in(output)
        self.events.append([key, call, "out", _combined(tensors)])
        if self.keep_outputs and tensors:
            out_key = f"{key}#{call}" if self._names is not None else (key, call)
            self.outputs[out_key] = tensors[0].detach().clone()
        for i, t in enumerate(tensors):
            if t.requires_grad:
                t.register_hook(self._grad_hook(key, call, f"gout{i}"))

    def _grad_hook(self, key: Any, call: int, phase: str) -> Callable[[torch.Tensor], None]:
        def hook(grad: torch.Tensor) -> None:
            self.events.append([key, call, phase, fp.fingerprint(grad)])

        return hook

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


class OutputRecorder:
    """The outputs of a model's own calls made with gradients on (training forwards, not
    evaluation), one fingerprint per call, collected until :meth:`take`. Hooks on the root
    modules given (at once or through :meth:`watch`), removed in ``close``; :meth:`record` is
    also a hook for callers that find the top-level calls themselves."""

    def __init__(self, roots: list[Any]):
        self._values: list[Any] = []
        self._pid = os.getpid()
        self._handles: list[RemovableHandle] = []
        self.watch(roots)

    def watch(self, roots: list[Any]) -> None:
        try:
            for root in roots:
                self._handles.append(root.register_forward_hook(self.record))
        except Exception:
            self.close()
            raise

    def record(self, module: Any, args: Any, output: Any) -> None:
        if torch.is_grad_enabled() and os.getpid() == self._pid:
            tensors = tensors_in(output)
            if tensors:
                self._values.append(_combined(tensors))

    def take(self) -> Any:
        """The step's combined output fingerprint (0 when the model made no call), reset."""
        values, self._values = self._values, []
        return combine(values)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _combined(tensors: list[Any]) -> Any:
    return combine(fp.fingerprints(tensors))


def combine(values: list[Any]) -> Any:
    """One fingerprint of several, order-sensitive (the fingerprint itself for one; 0 for none)."""
    if not values:
        return 0
    if len(values) == 1:
        return values[0]
    if all(isinstance(v, int) for v in values):
        return sum((2 * i + 1) * v for i, v in enumerate(values))
    device = next(v.device for v in values if isinstance(v, torch.Tensor))
    return sum((2 * i + 1) * torch.as_tensor(v, device=device) for i, v in enumerate(values))


def optimizer_state_tensors(optimizer: torch.optim.Optimizer, params: list[Any]) -> list[Any]:
    """The optimizer's per-parameter state tensors, in parameter then key order."""
    out = []
    for p in params:
        state = optimizer.state.get(p, {})
        for key in sorted(state):
            value = state[key]
            if isinstance(value, torch.Tensor):
                out.append(value)
    return out


def batch_parts(tensors: list[Any]) -> tuple[Any, Any]:
    """The fingerprint of a batch's tensors (:func:`_combined`) and its rows part for
    :func:`step_fields`: per-sample fingerprints of a lone tensor (read once for both), one
    fingerprint for several tensors, nothing for none."""
    if len(tensors) == 1:
        rows, whole = fp.sample_fingerprints(tensors[0])
        return whole, rows
    whole = _combined(tensors)
    return whole, (whole if tensors else [])


def grad_parts(grads: list[Any]) -> fp.Scan:
    """Fingerprints of gradients, taken before the optimizer may change them (None: no grad),
    and the finite flag (1 when every gradient is finite, else 0; off the CPU a 0-d tensor
    until :func:`step_fields` gathers it with the fingerprints, no host sync of its own)."""
    return fp.scan(grads)


def read_grads(params: list[Any], names: list[str], copy: bool) -> tuple[Any, ...]:
    """(:func:`grad_parts` values, finite flag, copies by name for the lockstep or None) of
    the parameters' gradients now: one evaluation of a step."""
    scanned = grad_parts([p.grad for p in params])
    copies = None
    if copy:
        copies = {n: p.grad.detach().clone() for n, p in zip(names, params) if p.grad is not None}
    return scanned.values, scanned.finite, copies


def combine_evaluations(evaluations: list[Any]) -> tuple[Any, ...]:
    """A step's gradients from the :func:`read_grads` of each evaluation of its closure (LBFGS
    evaluates it several times): each gradient's fingerprints combined over the evaluations
    (a difference in any of them shows), the finite flags together, the copies joined. One
    evaluation's are returned as they are."""
    grads, finite, copies = evaluations[0]
    if len(evaluations) == 1:
        return grads, finite, copies
    columns = zip(*(values for values, _, _ in evaluations))
    grads = [None if all(v is None for v in column) else combine([v for v in column if v is not None])
             for column in columns]
    for _, more, _ in evaluations[1:]:
        finite = finite * more
    if copies is not None:
        copies = {n: torch.cat([c[n].flatten() for _, _, c in evaluations if n in c]) for n in copies}
    return grads, finite, copies


def _loss_bits(losses: list[Any]) -> Any:
    """The float32 bits of the summed loss: gathered with the fingerprints, so the loss value
    costs no host sync of its own."""
    if not losses:
        return None
    total = losses[0].detach().float().sum()
    for extra in losses[1:]:
        total = total + extra.detach().float().sum().to(total.device)
    bits = total.reshape(1).view(torch.int32)
    return int(bits) if bits.device.type == "cpu" else bits.to(torch.int64).reshape(())


def _bits_value(bits: Any) -> Optional[float]:
    return None if bits is None else struct.unpack("<f", struct.pack("<i", int(bits)))[0]


def step_fields(inputs: Any, targets: Any, input_rows: list[Any], target_rows: list[Any], losses: list[Any],
                grads: list[Any], params: list[Any], optim_state: Optional[list[Any]] = None,
                events: Optional[list[Any]] = None, outputs: Any = None, grads_finite: Any = 1,
                extra: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """A step's fingerprint fields of a trace record, gathered with the step's one host sync.

    ``inputs``/``targets`` are the batch's fingerprints (``_combined`` of its tensors);
    ``input_rows``/``target_rows`` lists of rows parts of :func:`batch_parts` (one per
    batch); ``losses`` the tensors backward ran from;
    ``grads`` the :func:`grad_parts` taken before the update; ``params`` the parameters after
    it. ``optim_state`` and ``events`` ([name, call, phase, fingerprint] of a
    :class:`ModuleRecorder`) are the detail mode's. ``outputs`` is the fingerprint of the
    model's outputs (:class:`OutputRecorder`), or None where they are not watched;
    ``grads_finite`` is the flag of :func:`grad_parts`. ``extra`` maps more field names to lists of
    fingerprints (script mode's ``start``, ``fed``, ``loss_targets``), each a list of texts.
    """
    head = [inputs, targets, _combined(losses), _loss_bits(losses), grads_finite,
            0 if outputs is None else outputs]
    nr, nt, n = len(input_rows), len(target_rows), len(params)
    parts = [*head, *input_rows, *target_rows, *grads, *fp.fingerprints(params)]
    if optim_state is not None:
        parts.append(_combined(optim_state))
    if events is not None:
        parts.extend(e[3] for e in events)
    extra = extra or {}
    for value in extra.values():
        parts.extend(value)
    values = fp.gather(parts)  # the step's one host sync
    at = len(head)
    rows_in, at = values[at:at + nr], at + nr
    rows_t, at = values[at:at + nt], at + nt
    grad_values, at = values[at:at + n], at + n
    param_values, at = values[at:at + n], at + n
    fields: dict[str, Any] = {
        "inputs": fp.as_text(values[0]), "targets": fp.as_text(values[1]),
        "inputs_rows": [fp.as_text(v) for part in rows_in for v in _as_list(part)],
        "targets_rows": [fp.as_text(v) for part in rows_t for v in _as_list(part)],
        "loss": fp.as_text(values[2]),
        "loss_value": _bits_value(values[3]),
        "grads_finite": bool(values[4]),
        "grads": [fp.as_text(v) if v is not None else None for v in grad_values],
        "params": [fp.as_text(v) for v in param_values],
    }
    if outputs is not None:
        fields["outputs"] = fp.as_text(values[5])
    if optim_state is not None:
        fields["optim"] = fp.as_text(values[at])
        at += 1
    if events is not None:
        fields["modules"] = [[e[0], e[1], e[2], fp.as_text(v)] for e, v in zip(events, values[at:])]
        at += len(events)
    for name, value in extra.items():
        fields[name] = [fp.as_text(v) for v in values[at:at + len(value)]]
        at += len(value)
    return fields


@dataclass
class _Loop:
    """What every traced step of one run uses."""

    setup: TrainingSetup
    device: torch.device
    optimizer: Any
    scheduler: Any
    named: list[Any]  # (name, parameter)
    detail: bool = False
    lockstep: Any = None
    recorder: Optional["ModuleRecorder"] = None  # detail mode: every module call
    watched: Optional["OutputRecorder"] = None  # the model's outputs

    @property
    def params(self) -> list[Any]:
        return [p for _, p in self.named]

    @property
    def names(self) -> list[Any]:
        return [n for n, _ in self.named]


def params_record(model: nn.Module, named: list[Any]) -> dict[str, Any]:
    """The ``params`` record: parameter and module names, module types, parameter shapes."""
    return {"type": Record.PARAMS, "names": [n for n, _ in named],
            "modules": [n for n, _ in model.named_modules()],
            "types": [type(m).__name__ for _, m in model.named_modules()],
            "shapes": [list(p.shape) for _, p in named]}


def _traced_step(loop: _Loop, step: int, batch: Any) -> dict[str, Any]:
    """Train one step on ``batch``; its ``step`` record."""
    started = time.perf_counter()
    batch = to_device(batch, loop.device)
    inputs, targets = split_batch(batch)
    rng = rng_fingerprints(loop.device)
    if loop.recorder is not None:
        loop.recorder.reset()
    loop.optimizer.zero_grad(set_to_none=True)
    loss = compute_loss(loop.setup, batch)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise TypeError("the loss must be a scalar tensor; make 'loss' or 'step' return one")
    loss.backward()
    params, names = loop.params, loop.names
    evaluations = [read_grads(params, names, loop.lockstep is not None)]
    assert loop.watched is not None  # run_traced sets it before the first step
    outputs = loop.watched.take()  # the step's forward; an LBFGS line search's count by its grads
    optimizer_step(loop.optimizer, loop.scheduler, step_closure(
        loop.setup, loop.optimizer, batch, loss,
        after=lambda: evaluations.append(read_grads(params, names, loop.lockstep is not None))))
    loop.watched.take()
    grads, finite, grad_copies = combine_evaluations(evaluations)

    record = {"type": Record.STEP, "step": step}
    (inputs_fp, inputs_rows), (targets_fp, targets_rows) = batch_parts(inputs), batch_parts(targets)
    record.update(step_fields(
        inputs_fp, targets_fp, [inputs_rows], [targets_rows], [loss], grads, params,
        optim_state=optimizer_state_tensors(loop.optimizer, params) if loop.detail else None,
        events=loop.recorder.events if loop.recorder is not None else None, outputs=outputs,
        grads_finite=finite))
    record["rng"] = rng
    record["seconds"] = round(time.perf_counter() - started, 6)
    if loop.lockstep is not None:
        assert loop.recorder is not None  # a lockstep run is a detail run: it records modules
        tensors = {"inputs": inputs, "targets": targets, "grads": grad_copies,
                   "params": {n_: p.detach() for n_, p in loop.named},
                   "outputs": loop.recorder.outputs}
        diffs = loop.lockstep.exchange(step, tensors)
        if diffs is not None:
            record["diffs"] = diffs
    return record


def run_traced(
    setup: TrainingSetup,
    steps: int,
    device: torch.device,
    writer: TraceWriter,
    detail: bool = False,
    lockstep: Optional[Lockstep] = None,
    on_step: Optional[Callable[[int], None]] = None,
    session: Any = None,  # an engine's (resume's Session): run/ names no engine
) -> int:
    """Train ``steps`` optimizer steps and trace them; returns the number of steps completed.

    ``detail`` adds module-level fingerprints and the optimizer state (the localizing replay);
    ``lockstep`` (detail mode) exchanges full tensors with the partner run for magnitudes.
    ``session`` (``audit resume``, :class:`probes.resume.session.Session`) starts the loop at
    ``session.start``, may restore a checkpoint once the objects exist (``loaded``), opens
    each pass over the data (``open_pass``) and sees every finished step (``stepped``).
    """
    model = setup.model.to(device)
    model.train()
    optimizer = setup.optimizer(model.parameters())
    loop = _Loop(setup, device, optimizer, make_scheduler(setup, optimizer),
                 list(model.named_parameters()), detail, lockstep)
    writer.write(params_record(model, loop.named))
    writer.write(init_record(loop.params, loop.names, lockstep))
    live = LiveObjects(model, optimizer, loop.scheduler, setup.data)
    if session is not None:
        session.loaded(live, writer)
    done = 0
    try:
        loop.recorder = ModuleRecorder(model, keep_outputs=lockstep is not None) if detail else None
        loop.watched = OutputRecorder([model])
        start, open_pass = (session.start, session.open_pass) if session is not None else (0, None)
        for step, batch in cycle_batches(setup.data, steps, start, open_pass):
            writer.write(_traced_step(loop, step, batch))
            done = step + 1
            if session is not None:
                session.stepped(live, done, writer)
            if on_step is not None:
                on_step(done)
    finally:
        if loop.watched is not None:
            loop.watched.close()
        if loop.recorder is not None:
            loop.recorder.close()
    return done


def init_record(params: list[Any], names: list[str], lockstep: Any = None) -> dict[str, Any]:
    """The ``init`` record: every parameter before the first update (and, in lockstep, how far
    the partner's are)."""
    record = {"type": Record.INIT, "params": [fp.as_text(v) for v in fp.gather(fp.fingerprints(params))]}
    if lockstep is not None:
        diffs = lockstep.exchange(-1, {"params": {n: p.detach() for n, p in zip(names, params)}})
        if diffs is not None:
            record["diffs"] = diffs
    return record


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]
