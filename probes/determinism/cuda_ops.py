"""The CUDA op scan: which ops of one training step PyTorch documents as nondeterministic on
CUDA, and which modules run them, from any machine (a CPU step runs the same aten ops).

One forward and backward pass runs under a ``TorchDispatchMode`` that sees every aten op,
the backward's included. Forward ops belong to the innermost module whose forward is running
(module hooks); backward ops to the module whose forward created the autograd node running
them (each module's new graph nodes are found from its outputs when its forward returns, and
node hooks say which node runs). Ops are matched against :mod:`.cuda_ops_table`.

On a GPU, :func:`confirm` reruns the step under ``use_deterministic_algorithms(True)`` and
records, per op, whether PyTorch reports that it has no deterministic implementation.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from audit.probes.determinism import cuda_ops_table as table
from audit.probes.results.cuda_ops import CudaLibraryUse, CudaOp, CudaOpsScan
from audit.probes.run.training import TrainingSetup, compute_loss, cycle_batches, tensors_in, to_device


class ModuleMap:
    """Module names for the forward ops (a stack of running modules) and for the backward's
    autograd nodes (assigned when each module's forward returns). Hooks are removed in
    :meth:`close`."""

    def __init__(self, model: Optional[nn.Module] = None, named: Optional[list[Any]] = None):
        """Hooks on ``model``'s modules, or on ``named``: ``[(name, module)]`` (script mode:
        every traced model's modules, under the names the reports use)."""
        self.stack: list[Any] = []
        self.node_module: dict[Any, Any] = {}
        self.inputs: list[Any] = []  # per running module: grad_fns of its inputs (walks stop there)
        self.handles: list[Any] = []
        self.local = threading.local()  # the backward node running in this thread
        try:
            if named is None:
                assert model is not None  # callers give a model or its named modules
                named = list(model.named_modules())
            for name, module in named:
                self.handles.append(module.register_forward_pre_hook(self._pre(name), with_kwargs=True))
                self.handles.append(module.register_forward_hook(self._post))
        except Exception:
            self.close()
            raise

    def _pre(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            self.entered(name, [args, kwargs])
        return hook

    def entered(self, name: str, args: Any) -> None:
        """A module's forward starts (its pre-hook; or, for a call already under way when the
        hooks were added, the caller says so)."""
        self.stack.append(name)
        self.inputs.append({t.grad_fn for t in tensors_in(args) if t.grad_fn is not None})

    def _post(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        """Claim the graph nodes this call made: those between its outputs and its inputs
        that no inner module claimed first (inner modules return first)."""
        if not self.stack:  # a call that began before the hooks
            return
        name, stop = self.stack.pop(), self.inputs.pop()
        seen: set[Any] = set()
        todo = [t.grad_fn for t in tensors_in(output) if t.grad_fn is not None]
        while todo:
            node = todo.pop()
            if node is None or node in stop or node in seen:
                continue
            seen.add(node)
            self.node_module.setdefault(node, name)
            todo.extend(n for n, _ in node.next_functions)

    def forward_module(self) -> Optional[str]:
        return self.stack[-1] if self.stack else None

    def backward_node(self) -> Optional[tuple[str, Optional[str]]]:
        """(node name, module) of the backward node this thread runs, or None."""
        return getattr(self.local, "node", None)

    def hook_graph(self, loss: torch.Tensor) -> None:
        """Before backward: every node of the loss's graph says when it runs."""
        seen, todo = set(), [loss.grad_fn]
        while todo:
            node = todo.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            info = (type(node).__name__, self.node_module.get(node))
            self.handles.append(node.register_prehook(self._enter(info)))
            self.handles.append(node.register_hook(self._leave))
            todo.extend(n for n, _ in node.next_functions)

    def _enter(self, info: tuple[str, Optional[str]]) -> Callable[[Any], None]:
        def hook(grad_outputs: Any) -> None:
            self.local.node = info
        return hook

    def _leave(self, grad_inputs: Any, grad_outputs: Any) -> None:
        self.local.node = None

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


@dataclass
class OpCall:
    """One recorded op call."""

    op: str  # overload packet, e.g. "index_add"
    key: Optional[str]  # table entry key, "cudnn" / "cublas", or None
    phase: str  # "forward" | "backward"
    module: Optional[str]
    refusal: str = ""  # confirm mode: PyTorch's message when deterministic mode refused it


class OpRecorder(TorchDispatchMode):
    """Records the documented ops (and cuDNN / cuBLAS ops) of the step it wraps; with
    ``confirm`` (deterministic algorithms on) it records which calls PyTorch refuses, and
    reruns just those with the setting off, as ``warn_only=True`` would."""

    def __init__(self, modules: ModuleMap, confirm: bool = False, quiet: bool = False):
        super().__init__()
        self.modules, self.confirm = modules, confirm
        self.quiet = quiet  # inside a user's own step: a call that cannot be matched is skipped
        self.backward = False
        self.calls: list[OpCall] = []  # [OpCall]

    def _call(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> OpCall:
        name = func._overloadpacket.__name__
        node = self.modules.backward_node()
        phase = "backward" if self.backward else "forward"
        module = node[1] if node is not None else self.modules.forward_module()
        entry = table.match(name, _named(func, args, kwargs), node[0] if node else None)
        return OpCall(name, entry.key if entry is not None else _library(name), phase, module)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        try:
            call = self._call(func, args, kwargs)
        except Exception:
            if not self.quiet:
                raise
            return func(*args, **kwargs)
        name, key, phase, module = call.op, call.key, call.phase, call.module
        if not self.confirm:
            if key is not None:
                self.calls.append(call)
            return func(*args, **kwargs)
        try:
            out, text = func(*args, **kwargs), ""
        except RuntimeError as exc:  # deterministic algorithms are on: no such implementation
            if "deterministic" not in str(exc):
                raise
            text = str(exc)
            torch.use_deterministic_algorithms(False)  # this call only, as warn_only would
            try:
                out = func(*args, **kwargs)
            finally:
                torch.use_deterministic_algorithms(True)
        if key is not None or text:
            self.calls.append(OpCall(name, key, phase, module, text))
        return out


def _named(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """An op call's arguments by their schema names."""
    named = {a.name: v for a, v in zip(func._schema.arguments, args)}
    named.update(kwargs)
    return named


def _library(op: str) -> Optional[str]:
    if op in table.CUDNN_OPS:
        return "cudnn"
    if op in table.CUBLAS_OPS:
        return "cublas"
    return None


def record_step(setup: TrainingSetup, batch: Any, confirm: bool = False) -> list[Any]:
    """Run one forward and backward pass of ``setup`` on ``batch`` (already on its device)
    under the recorder; returns its calls. The optimizer does not step."""
    model = setup.model
    model.train()
    modules = ModuleMap(model)
    recorder = OpRecorder(modules, confirm=confirm)
    try:
        model.zero_grad(set_to_none=True)
        with recorder:
            loss = compute_loss(setup, batch)
            modules.hook_graph(loss)
            recorder.backward = True
            loss.backward()
    finally:
        modules.close()
        model.zero_grad(set_to_none=True)
    return recorder.calls


def summarize(calls: list[Any], device: str, cublas_needed: bool) -> CudaOpsScan:
    """Group recorded calls by table entry and op: passes, modules, counts."""
    ops: dict[tuple[Any, Any], Any] = {}
    libraries: dict[str, Any] = {}
    for call in calls:
        key, module = call.key, call.module
        if key in ("cudnn", "cublas"):
            lib = libraries.setdefault(key, CudaLibraryUse(
                key, fix=table.CUDNN_FIX if key == "cudnn" else table.CUBLAS_FIX,
                needed=key == "cudnn" or cublas_needed))
            _add(lib.ops, f"aten::{call.op}")
            _add(lib.modules, module)
            continue
        if key is None:
            continue
        entry = table.BY_KEY[key]
        found = ops.setdefault((key, call.op), CudaOp(
            op=f"aten::{call.op}", entry=key, doc=entry.doc, category=entry.category))
        _add(found.passes, call.phase)
        _add(found.modules, module)
        found.count += 1
    cublas = cublas_needed and "cublas" in libraries
    for found in ops.values():
        found.cublas_workspace = cublas
    return CudaOpsScan(torch=torch.__version__, device=device, source=table.SOURCE,
                       ops=list(ops.values()),
                       libraries=[libraries[k] for k in ("cudnn", "cublas") if k in libraries],
                       cublas_workspace_required=cublas)


def _add(items: list[Any], value: Any) -> None:
    if value not in items:
        items.append(value)


def scan(setup: TrainingSetup, batch: Any, device: torch.device) -> CudaOpsScan:
    """The documented CUDA-nondeterministic ops of one forward and backward pass."""
    return summarize(record_step(setup, batch), str(device), cublas_needed())


def cublas_needed() -> bool:
    """Whether the installed torch asks for ``CUBLAS_WORKSPACE_CONFIG`` under deterministic
    algorithms (read from its documentation)."""
    return table.cublas_workspace_required(torch.use_deterministic_algorithms.__doc__)


def confirm(setup: TrainingSetup, batch: Any, result: CudaOpsScan, device: torch.device) -> None:
    """On a GPU: rerun the pass with ``use_deterministic_algorithms(True)`` and mark each
    listed op confirmed (PyTorch reported it has no deterministic implementation) or not.
    A refused call is rerun with the setting off, so the step completes as under
    ``warn_only=True``, but each report is tied to its op and module (PyTorch's warnings only
    surface when the whole forward or backward call returns). Reports from ops the table
    does not list are added as ``raises`` ops of their own (entry ``"reported"``)."""
    was = (torch.are_deterministic_algorithms_enabled(),
           torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True)
    try:
        calls = record_step(setup, batch, confirm=True)
    finally:
        torch.use_deterministic_algorithms(was[0], warn_only=was[1])
    warned: dict[tuple[str, Any], Any] = {}
    for call in calls:
        cublas = call.key == "cublas" or "CUBLAS_WORKSPACE_CONFIG" in call.refusal
        if call.refusal and not cublas:  # cuBLAS refusals (older torch) ask for the variable
            warned.setdefault((f"aten::{call.op}", call.module), call)
    for found in result.ops:
        hits = [warned.pop((found.op, m), None) for m in found.modules]
        hits = [h for h in hits if h is not None]
        if found.category == table.RAISES or hits:
            found.confirmed = bool(hits)
            found.warning = _kernel(hits[0].refusal) if hits else ""
    for (op, module), call in warned.items():
        result.ops.append(CudaOp(op=op, entry="reported", doc=call.refusal.split(". ")[0],
                                 category=table.RAISES, passes=[call.phase], modules=[module],
                                 count=1, confirmed=True, warning=_kernel(call.refusal)))
    result.confirmed_on = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)


def _kernel(text: str) -> str:
    """The kernel a determinism warning names: its first word."""
    return text.split(" ", 1)[0] if text else ""


def scan_training(setup: TrainingSetup, device: torch.device) -> CudaOpsScan:
    """The scan the determinism audit runs at the end of its first run: the data's first
    batch, one forward and backward pass (and on a GPU, the confirming pass). A step that
    raises gives a scan with ``error`` set instead of an exception."""
    try:
        batches = cycle_batches(setup.data, 1)
        try:
            _, batch = next(batches)
        finally:
            batches.close()  # a DataLoader's workers end here, not at garbage collection
        batch = to_device(batch, device)
        result = scan(setup, batch, device)
        if device.type == "cuda":
            confirm(setup, batch, result, device)
        return result
    except Exception as exc:  # the user's step: report, do not fail the audit
        return CudaOpsScan(torch=torch.__version__, device=str(device), source=table.SOURCE,
                           error=f"{type(exc).__name__}: {exc}")
