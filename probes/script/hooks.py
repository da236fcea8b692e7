"""Script mode's hooks on the user's objects: installed before the script runs, removed after.

:class:`ScriptHooks` wraps ``torch.optim.Optimizer.__init__`` (each optimizer made), the
DataLoader iterators' ``__next__`` (each batch fetched), ``torch.autograd.backward`` (which
``Tensor.backward`` goes through) and ``torch.autograd.grad`` (each backward pass), the seeding
functions of Python's and NumPy's global generators, and the functional losses
(:mod:`probes.script.data`); it registers torch's global optimizer step hooks and module
forward hooks (in detail mode also a :class:`probes.run.trace.ModuleRecorder`) and installs
the :class:`probes.script.draws.DrawWatch`. Every name wrapped and every handle registered is
recorded as it is made, and removed, last made first, by :meth:`ScriptHooks.remove`; an install
that fails part-way removes what it made before the error goes on (as torchinfo registers its
hooks in a ``try`` and removes them in ``finally``). What the hooks see goes to a
:class:`Listener` (the :class:`probes.script.tracer.ScriptTracer`).

:func:`wrap_closure` wraps the closure a script gives ``optimizer.step``.
"""
from __future__ import annotations

import functools
import os
import random
import weakref
from typing import Any, Callable, Optional, Protocol

import numpy as np
import torch
from torch import nn

from audit.probes.run.trace import ModuleRecorder
from audit.probes.run.training import tensors_in
from audit.probes.script import data as script_data
from audit.probes.script.draws import DrawWatch
from audit.probes.script.seeded import SeedWatch
from audit.probes.script.patch import swap


class Listener(Protocol):
    """What the hooks tell (:class:`probes.script.tracer.ScriptTracer`)."""

    counting: Optional[str]

    def on_optimizer(self, opt: torch.optim.Optimizer) -> None: ...
    def on_batch(self, data: Any) -> None: ...
    def on_loss_target(self, target: torch.Tensor) -> None: ...
    def before_backward(self, tensors: Any) -> None: ...
    def after_backward(self, grads_by_id: Optional[dict[int, Any]]) -> None: ...
    def pre_step(self, optimizer: torch.optim.Optimizer, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> Optional[tuple[Any, ...]]: ...
    def post_step(self, optimizer: torch.optim.Optimizer, args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> None: ...
    def top_call(self, module: nn.Module, args: tuple[Any, ...]) -> None: ...
    def top_output(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None: ...


class ScriptHooks:
    """The hooks of one traced run (see the module's docstring). ``in_loader``: a DataLoader
    is fetching a batch (its transforms are modules too, but not the model's calls);
    ``depth``: how many of the model's module calls are running (a top-level call is one made
    at depth 0; loss modules and data transforms do not count)."""

    def __init__(self, listener: Listener, seeds: SeedWatch, draws: Optional[DrawWatch],
                 detail: bool = False, keep_outputs: bool = False):
        self.listener, self.seeds, self.draws = listener, seeds, draws
        self.detail, self.keep_outputs = detail, keep_outputs
        self.in_loader = False
        self.depth = 0
        self.recorder: Optional[ModuleRecorder] = None
        self._backward_depth = 0
        self._iterators: weakref.WeakSet[Any] = weakref.WeakSet()  # with worker processes
        self._undo: list[Callable[[], None]] = []
        self._pid = os.getpid()

    @property
    def installed(self) -> bool:
        return bool(self._undo)

    def install(self) -> None:
        try:
            self._install()
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        """Put back every wrapped name and remove every handle, the last made first."""
        undo, self._undo = self._undo, []
        for step in reversed(undo):
            step()

    def shutdown_loaders(self) -> None:
        """Stop the worker processes of every DataLoader iterator still alive (a run stopped
        mid-epoch leaves them waiting)."""
        for it in list(self._iterators):
            try:
                it._shutdown_workers()
            except Exception:
                pass

    def _install(self) -> None:
        from torch.optim import optimizer as optim_mod

        listener = self.listener
        original_init = torch.optim.Optimizer.__init__

        def optimizer_init(opt: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> None:
            original_init(opt, *args, **kwargs)
            listener.on_optimizer(opt)

        self._patch(torch.optim.Optimizer, "__init__", optimizer_init)
        self._patch_loader()
        self._patch_backward()
        for owner, name, stream in ((np.random, "seed", "numpy"), (np.random, "set_state", "numpy"),
                                    (random, "seed", "python"), (random, "setstate", "python")):
            self._patch(owner, name, self.seeds.seeding(getattr(owner, name), stream,
                                                        name.startswith("seed")))
        for owner, name, original in script_data.install(listener.on_loss_target):
            self._undo.append(functools.partial(setattr, owner, name, original))
        self._handle(optim_mod.register_optimizer_step_pre_hook(listener.pre_step))
        self._handle(optim_mod.register_optimizer_step_post_hook(listener.post_step))
        reg = nn.modules.module
        self._handle(reg.register_module_forward_pre_hook(self._top_pre))
        self._handle(reg.register_module_forward_hook(self._top_post, always_call=True))
        if self.detail:
            self.recorder = ModuleRecorder(None, keep_outputs=self.keep_outputs)
            self._undo.append(self.recorder.close)
        if self.draws is not None:
            self.draws.install()
            self._undo.append(self.draws.finish)  # first removed: its wrappers wrap ours

    def _top_pre(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self.in_loader or script_data.is_loss_module(module):
            return
        if self.depth == 0:
            self.listener.top_call(module, args)
        self.depth += 1

    def _top_post(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not (self.in_loader or script_data.is_loss_module(module)):
            self.depth = max(self.depth - 1, 0)
            if self.depth == 0:
                self.listener.top_output(module, args, output)

    def _patch_loader(self) -> None:
        from torch.utils.data import dataloader

        hooks, listener = self, self.listener
        original_next = dataloader._BaseDataLoaderIter.__next__

        def loader_next(it: Any) -> Any:
            hooks.in_loader = True
            try:
                data = original_next(it)
            finally:
                hooks.in_loader = False
            workers: int = getattr(it, "_num_workers", 0)
            if workers and os.getpid() == hooks._pid:
                hooks._iterators.add(it)
            listener.on_batch(data)
            return data

        self._patch(dataloader._BaseDataLoaderIter, "__next__", loader_next)

    def _patch_backward(self) -> None:
        """``torch.autograd.backward`` and ``torch.autograd.grad``: the losses, and the steps
        when they are backward passes (a backward pass inside another is not one)."""
        hooks, listener = self, self.listener
        original_backward, original_grad = torch.autograd.backward, torch.autograd.grad

        def backward(tensors: Any, *args: Any, **kwargs: Any) -> Any:
            outer = hooks._backward_depth == 0
            if outer:
                listener.before_backward(tensors)
            hooks._backward_depth += 1
            try:
                result = original_backward(tensors, *args, **kwargs)
            finally:
                hooks._backward_depth -= 1
            if outer:
                listener.after_backward(None)
            return result

        def grad(outputs: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
            outer = hooks._backward_depth == 0 and listener.counting != "optimizer"
            if outer:
                listener.before_backward(outputs)
            hooks._backward_depth += 1
            try:
                result = original_grad(outputs, inputs, *args, **kwargs)
            finally:
                hooks._backward_depth -= 1
            if outer:
                listener.after_backward({id(t): g for t, g in zip(tensors_in(inputs), result)})
            return result

        self._patch(torch.autograd, "backward", backward)
        self._patch(torch.autograd, "grad", grad)

    def _patch(self, owner: Any, name: str, replacement: Any) -> None:
        self._undo.append(functools.partial(setattr, owner, name, swap(owner, name, replacement)))

    def _handle(self, handle: Any) -> None:
        self._undo.append(handle.remove)


def wrap_closure(args: tuple[Any, ...], kwargs: dict[str, Any],
                 evaluated: Callable[[Any, int], None],
                 losses: Callable[[], int]) -> Optional[tuple[tuple[Any, ...], dict[str, Any]]]:
    """``optimizer.step(closure)`` (``args[0]`` is the optimizer) or ``step(closure=...)``:
    the step's (args, kwargs) with the closure wrapped, else None. The closure (forward and
    backward, as Lightning's automatic optimization and LBFGS run them inside the step) is
    read after each call: ``evaluated(result, mark)`` gets its return value (the loss) and
    ``losses()``, the number of loss tensors kept, taken before the call."""
    def wrapped(closure: Callable[..., Any]) -> Callable[..., Any]:
        def evaluate(*call_args: Any, **call_kwargs: Any) -> Any:
            mark = losses()
            result = closure(*call_args, **call_kwargs)
            evaluated(result, mark)
            return result

        return evaluate

    if callable(kwargs.get("closure")):
        return args, dict(kwargs, closure=wrapped(kwargs["closure"]))
    if len(args) > 1 and callable(args[1]):
        return (args[0], wrapped(args[1]), *args[2:]), kwargs
    return None
