"""Tracing a training script the audit did not write (script mode).

:class:`ScriptTracer` is installed before the script's own code runs and writes the same trace
as :func:`probes.run.trace.run_traced`, one record per step. A step is one ``torch.optim``
optimizer step; in a script that makes none (it updates parameters by hand,
``p -= lr * p.grad``) a step is one backward pass (``Tensor.backward``,
``torch.autograd.backward``, ``torch.autograd.grad``), decided at the first of either. With
optimizers a record has the gradients of every traced parameter before ``optimizer.step()``
(read after each evaluation of a closure given to it) and the parameters after it; without,
the gradients after its backward pass and the parameters just before the next one (after the
script's update). The tracer decides when a step begins and ends; its parts hold the rest:
:mod:`probes.script.hooks` (the hooks on the user's objects, which tell it what the script
does), :mod:`probes.script.step` (what the current step gathers), :mod:`probes.script.params`
(the tensors traced, named), :mod:`probes.script.records` (the trace records) and
:mod:`probes.script.seeded` (the escape records of OS-seeded global generators).

After ``steps`` steps a hook raises :class:`StopScript`, a ``BaseException`` the script's
``except Exception`` cannot swallow; the bootstrap catches it and ends the run.
"""
from __future__ import annotations

import os
import threading
from typing import Any, Callable, Optional, Protocol

import torch
from torch import nn

from audit.probes.run.lockstep import Lockstep
from audit.probes.run.trace import TraceWriter, read_grads, rng_fingerprints
from audit.probes.run.training import tensors_in
from audit.probes.script.draws import DrawWatch
from audit.probes.script.hooks import ScriptHooks, wrap_closure
from audit.probes.script.params import TracedParams
from audit.probes.script.records import TraceRecords
from audit.probes.script.seeded import SeedWatch
from audit.probes.script.step import Step, StepState, current_device


class StopScript(BaseException):
    """Raised from the optimizer hook once the steps asked for are done (not an ``Exception``,
    so the script's own ``except Exception`` lets it through)."""


class Scan(Protocol):
    """The op scan of the second step (:class:`probes.determinism.script_ops.StepScan`)."""

    def start(self, module_names: dict[Any, str], module: nn.Module, args: tuple[Any, ...]) -> None: ...
    def backward(self, tensors: Any) -> None: ...
    def finish(self, device: torch.device) -> None: ...


class ScriptTracer:
    """Traces a script's training; ``install`` before it runs, ``uninstall`` after.

    ``environment(device) -> dict`` gives the ``env`` record's environment, written at the
    first step (the script has chosen its device and flags by then).
    """

    def __init__(self, writer: TraceWriter, steps: int, detail: bool = False,
                 lockstep: Optional[Lockstep] = None,
                 environment: Optional[Callable[[torch.device], dict[str, Any]]] = None,
                 escape_log: Optional[str] = None, draws: Optional[DrawWatch] = None):
        self.steps, self.lockstep, self.draws = steps, lockstep, draws
        self.done = 0
        self.stopped = False
        self.counting: Optional[str] = None  # "optimizer" | "backward": what a step is
        self.traced = TracedParams()
        self.state = StepState()
        self.seeds = SeedWatch(escape_log)
        self.records = TraceRecords(writer, self.traced, detail, lockstep, environment)
        self.hooks = ScriptHooks(self, self.seeds, draws, detail, keep_outputs=lockstep is not None)
        self._pending: Optional[Step] = None  # backward counting: written at the next one
        self._begun = False
        self._thread = threading.get_ident()  # the thread that trains
        self._pid = os.getpid()
        self.on_step: Optional[Callable[[int], None]] = None  # after each step record (ranks)
        self.scan: Optional[Scan] = None  # the first run's op scan
        self.closures = False  # the first step's optimizer was given a closure

    def install(self) -> None:
        self.seeds.start()
        self.hooks.install()

    def uninstall(self) -> None:
        if self.scan is not None and self._mine():
            self.scan.finish(current_device())
        if self.hooks.installed and self._mine():
            if self._pending is not None:  # the last backward pass's step, after its update
                self._flush(final=True)
            self._check_globals(rng_fingerprints(torch.device("cpu")))
        self.hooks.remove()
        self.draws = None

    def shutdown_loaders(self) -> None:
        self.hooks.shutdown_loaders()

    def _mine(self) -> bool:
        return os.getpid() == self._pid

    def _main_thread(self) -> bool:
        return self._mine() and threading.get_ident() == self._thread

    # ------------------------------------------------------------------ what the hooks see

    def on_optimizer(self, opt: torch.optim.Optimizer) -> None:
        self.traced.register(opt)

    def on_batch(self, data: Any) -> None:
        if not self._mine() or threading.get_ident() != self._thread:
            return  # a prefetching thread: when it fetches is timing, not training
        if self.stopped:
            raise StopScript()
        self.state.add_batch(data, keep=self.lockstep is not None)

    def on_loss_target(self, target: torch.Tensor) -> None:
        """A target given to a functional loss outside the model, while training."""
        if self.hooks.depth or self.hooks.in_loader or target.grad_fn is not None \
                or not torch.is_grad_enabled() or not self._main_thread():
            return
        self.state.add_target(target, keep=self.lockstep is not None)

    def top_call(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        """A top-level call of the model (:class:`~probes.script.hooks.ScriptHooks`)."""
        if not self._main_thread():
            return
        started = self._begun and self.counting == "optimizer" and self.done
        self.state.at_top(args, self.lockstep is not None, self.traced if started else None)
        if self.scan is not None and self._begun and self.done:  # the second step
            self.scan.start(self.traced.naming.module_names, module, args)

    def top_output(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self._main_thread():
            self.state.outputs.record(module, args, output)

    # ------------------------------------------------------------------ the step

    def _decide(self) -> None:
        """What a step is: an optimizer step when the script made an optimizer before it
        first trained, else a backward pass."""
        self.counting = "optimizer" if self.traced.live_optimizers() else "backward"

    def before_backward(self, tensors: Any) -> None:
        if not self._mine():
            return
        if self.counting is None:
            self._decide()
        if self.counting == "backward":
            if self.stopped:
                raise StopScript()
            if self._pending is not None:
                self._flush()
            if not self._begun:
                self._begin(tensors)
            if self.state.rng is None:
                self.state.rng = rng_fingerprints(current_device())
        for t in tensors_in(tensors):
            self.state.losses.append(t.detach())
        if self.scan is not None:
            self.scan.backward(tensors)

    def after_backward(self, grads_by_id: Optional[dict[int, Any]]) -> None:
        if self.counting != "backward" or not self._begun or not self._mine():
            return
        if self.scan is not None:
            self.scan.finish(current_device())
        grads, copies = self.state.backward_grads(grads_by_id, self.traced, self.lockstep is not None)
        self._pending = self._take(grads, copies)

    def pre_step(self, optimizer: torch.optim.Optimizer, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> Optional[tuple[Any, ...]]:
        if not self._mine():
            return None
        if self.counting is None:
            self._decide()
        if self.counting != "optimizer":
            return None
        if self.stopped:
            raise StopScript()
        if self.scan is not None:
            self.scan.finish(current_device())
        self.traced.register(optimizer)
        state = self.state
        wrapped = wrap_closure(args, kwargs, self._after_closure, lambda: len(state.losses))
        if not self._begun:
            self.closures = wrapped is not None
            self._begin()
        elif self.traced.grew(optimizer) and self.traced.add_optimizers():
            self.records.writer.write(self.records.header(self.counting))  # compare keeps the first
        if wrapped is None:  # the gradients are there already
            state.grads, state.finite, state.grad_copies = self._read_grads()
        else:  # forward and backward run inside the step: read after each evaluation
            state.evaluations = []
        if state.rng is None:
            state.rng = rng_fingerprints(current_device())
        return wrapped

    def _read_grads(self) -> tuple[Any, ...]:
        return read_grads(self.traced.params, self.traced.names, self.lockstep is not None)

    def _after_closure(self, result: Any, mark: int) -> None:
        """One evaluation of the step's closure ended (:meth:`StepState.evaluated`)."""
        if self.state.evaluations is None or not self._main_thread():
            return
        if self.scan is not None:
            self.scan.finish(current_device())
        self.state.evaluated(result, mark, self._read_grads)

    def post_step(self, optimizer: torch.optim.Optimizer, args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> None:
        if not self._mine() or self.counting != "optimizer":
            return
        state = self.state
        if state.evaluations is not None:
            state.closure_grads(self._read_grads)
        if state.grads is None:
            return
        self._write(self._take(state.grads, state.grad_copies), self.traced.index(optimizer))

    def _flush(self, final: bool = False) -> None:
        step, self._pending = self._pending, None
        assert step is not None
        self._write(step, None, final=final)

    def _take(self, grads: list[Any], grad_copies: Optional[dict[str, torch.Tensor]]) -> Step:
        """The step's gatherings so far; the buffers start again for the next step."""
        rng = self.seeds.compared(self.state.rng or {})
        self._check_globals(self.state.rng or {})
        return self.state.take(grads, grad_copies, rng, self.hooks.recorder, self.traced.naming)

    def _check_globals(self, states: dict[str, Any]) -> None:
        self.seeds.check(states, self.draws.reported() if self.draws is not None else set())

    def _write(self, step: Step, optimizer: Optional[int], final: bool = False) -> None:
        self.records.write_step(step, self.done, optimizer)
        self.done += 1
        if self.on_step is not None:
            self.on_step(self.done)
        if self.done >= self.steps:
            self.stopped = True
            if not final:
                raise StopScript()

    def _begin(self, tensors: Any = None) -> None:
        """First step: name what is traced, write the header, the init and env records."""
        self._begun = True
        self._thread = threading.get_ident()
        if self.draws is not None:
            self.draws.settle()
        self.records.source = "dataloader" if self.state.batches else "module_inputs"
        if self.counting == "optimizer":
            self.traced.add_optimizers()
        else:
            self.traced.add_leaves(tensors)
        self.records.begin(self.counting, self.closures)
