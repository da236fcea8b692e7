"""Tracing a training script the audit did not write (script mode).

:class:`ScriptTracer` installs process-wide hooks before the script's own code runs and writes
the same trace as :func:`probes.run.trace.run_traced`, one record per step. A step is one
``torch.optim`` optimizer step; in a script that makes none (it updates parameters by hand,
``p -= lr * p.grad``) a step is one backward pass (``Tensor.backward``,
``torch.autograd.backward``, ``torch.autograd.grad``), decided at the first of either:

* **the step**: with optimizers, ``torch.optim`` global step hooks: gradients of every traced
  parameter before ``optimizer.step()``, the parameters after it. Without, the trained tensors
  are the leaves of the first backward pass's graph; each record has the gradients after its
  backward pass and the parameters just before the next one (after the script's update). The
  first step writes the ``params`` header (with ``counting``: ``optimizer`` or ``backward``),
  the ``init`` record (the parameters before any update) and the ``env`` record. With several
  models, names carry a prefix that says which optimizer's model parted (``opt1.main.0.weight``).
* **the parameters at the start of each step** (``start``, optimizer steps): at the step's
  first top-level module call, so a change made between two updates is seen where it was made.
* **the batch**: DataLoader iteration (the batches fetched since the last step, fingerprinted
  as they arrive); and wherever the data come from, what the model receives (``fed``: the
  tensors given to the step's first top-level module call with gradients on) and what the loss
  compares with (``loss_targets``: :mod:`probes.script.data`). Without a DataLoader these are
  the step's ``inputs`` and ``targets``.
* **the RNG states**: when the last batch arrives (else at the first module call, else just
  before the update).
* **the loss**: every tensor a backward pass ran from since the last step; **the outputs**:
  those of the model's top-level calls with gradients on (:class:`probes.run.trace.OutputRecorder`).
* **detail mode**: global module hooks (a :class:`probes.run.trace.ModuleRecorder` without a model).

After ``steps`` steps a hook raises :class:`StopScript`, a ``BaseException`` the script's
``except Exception`` cannot swallow; the bootstrap catches it and ends the run.
"""
from __future__ import annotations

import collections
import json
import os
import random
import threading
import time
import weakref
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from audit.probes.run import fingerprint as fp
from audit.probes.script import data as script_data
from audit.probes.run import knobs
from audit.probes.run.environment import code_fingerprint
from audit.probes.script.names import Naming, graph_leaves, join
from audit.probes.run.trace import (ModuleRecorder, OutputRecorder, TraceWriter, batch_parts, combine,
                                combine_evaluations, grad_parts, init_record,
                                optimizer_state_tensors, read_grads, rng_fingerprints, step_fields)
from audit.probes.run.training import split_batch, tensors_in
from audit.probes.results.records import Record

#: Batches kept per step: the ones fetched last before the update (accumulation included).
MAX_BATCHES = 32
#: Loss tensors kept per step.
MAX_LOSSES = 64
#: Global generators Python and NumPy seed from the OS at start-up: their states are compared
#: once the script seeds them; a script that draws from one it never seeded is an escape of the
#: seed. torch's default generator is not fixed at start-up either (``torch.initial_seed()``
#: differs in every process), but a torch state that differs is always compared: the draws
#: made before seeding are :mod:`probes.script.draws`' to find.
OS_SEEDED = {"numpy": "numpy.random.seed(not called)", "python": "random.seed(not called)"}


class StopScript(BaseException):
    """Raised from the optimizer hook once the steps asked for are done (not an ``Exception``,
    so the script's own ``except Exception`` lets it through)."""


def _parts(tensors: list):
    """Each tensor's fingerprint and the batch's rows part (:func:`batch_parts`), every
    tensor read once."""
    if len(tensors) == 1:
        whole, rows = batch_parts(tensors)
        return [whole], rows
    values = fp.fingerprints(tensors)
    return values, (combine(values) if values else [])


class _Batch:
    """One fetched batch, fingerprinted on arrival."""

    __slots__ = ("inputs", "targets", "input_rows", "target_rows", "tensors")

    def __init__(self, inputs: list, targets: list, keep: bool):
        self.inputs, self.input_rows = _parts(inputs)
        self.targets, self.target_rows = _parts(targets)
        self.tensors = (inputs, targets) if keep else None


class _Step:
    """What one step gathered, taken when its gradients are known; written with the
    parameters after its update."""

    __slots__ = ("batches", "fed", "fed_tensors", "targets", "target_tensors", "losses", "rng",
                 "grads", "grad_copies", "start", "start_copies", "events", "outputs",
                 "model_outputs", "finite")

    def __init__(self, **values):
        for name in self.__slots__:
            setattr(self, name, values.get(name))


class ScriptTracer:
    """Hooks that trace a script's training; ``install`` before it runs, ``uninstall`` after.

    ``environment(device) -> dict`` gives the ``env`` record's environment, written at the
    first step (the script has chosen its device and flags by then).
    """

    def __init__(self, writer: TraceWriter, steps: int, detail: bool = False, lockstep=None,
                 environment: Optional[Callable] = None, escape_log: Optional[str] = None,
                 draws=None):
        self.writer, self.steps, self.detail, self.lockstep = writer, steps, detail, lockstep
        self.environment, self.escape_log = environment, escape_log
        self.draws = draws  # a probes.script.draws.DrawWatch, or None
        self._seeded: set = set()  # OS-seeded global generators the script has seeded
        self._start_states: dict = {}
        self._reported: set = set()
        self.done = 0
        self.stopped = False
        self.counting: Optional[str] = None  # "optimizer" | "backward": what a step is
        self.params: list = []  # traced parameters, in optimizer then group order
        self.names: list = []
        self.optimizers: list = []  # [weakref], creation order: the index in "opt{i}"
        self.naming = Naming()
        self._opt_index = weakref.WeakKeyDictionary()
        self._traced = weakref.WeakKeyDictionary()  # optimizer -> parameter count traced
        self._param_ids: set = set()
        self._batches = collections.deque(maxlen=MAX_BATCHES)
        self._losses = collections.deque(maxlen=MAX_LOSSES)
        self._reset_step()
        self._pending: Optional[_Step] = None  # backward counting: written at the next one
        self._depth = 0
        self._backward_depth = 0
        self._in_loader = False
        self._begun = False
        self._thread = threading.get_ident()  # the thread that trains
        self._iterators = weakref.WeakSet()
        self._handles: list = []
        self._top_handles: list = []
        self._patches: list = []
        self._recorder: Optional[ModuleRecorder] = None
        self._outputs = OutputRecorder([])  # the models' top-level outputs of each step
        self._pid = os.getpid()
        self._last = time.perf_counter()
        self.source = "none"  # where the data compared come from: "dataloader" | "module_inputs"
        self.on_step: Optional[Callable[[int], None]] = None  # after each step record (ranks)
        self.scan = None  # a probes.determinism.script_ops.StepScan: the first run's op scan
        self.closures = False  # the first step's optimizer was given a closure

    def _reset_step(self) -> None:
        self._batches.clear()
        self._losses.clear()
        self._fed = self._fed_tensors = None
        self._targets, self._target_tensors = [], []
        self._rng = self._grads = self._grad_copies = None
        self._start = self._start_copies = None
        self._finite = 1  # the finite flag of the step's gradients (grad_parts)
        # A step given a closure: each of its evaluations' (grads, finite, copies), else None
        self._evaluations: Optional[list] = None
        self._closure_outputs = None  # its first evaluation's model outputs

    # ------------------------------------------------------------------ install / uninstall

    def install(self) -> None:
        try:
            self._install()
        except Exception:
            self.uninstall()
            raise

    def _install(self) -> None:
        from torch.optim import optimizer as optim_mod
        from torch.utils.data import dataloader

        tracer = self
        original_init = torch.optim.Optimizer.__init__

        def optimizer_init(opt, *args, **kwargs):
            original_init(opt, *args, **kwargs)
            tracer._register(opt)

        self._patch(torch.optim.Optimizer, "__init__", optimizer_init, original_init)
        original_next = dataloader._BaseDataLoaderIter.__next__

        def loader_next(it):
            tracer._in_loader = True  # transforms are modules too: not the model's calls
            try:
                data = original_next(it)
            finally:
                tracer._in_loader = False
            tracer._on_batch(it, data)
            return data

        self._patch(dataloader._BaseDataLoaderIter, "__next__", loader_next, original_next)
        self._patch_backward()
        for owner, name, stream in ((np.random, "seed", "numpy"), (np.random, "set_state", "numpy"),
                                    (random, "seed", "python"), (random, "setstate", "python")):
            original = getattr(owner, name)
            self._patch(owner, name, self._seeding(original, stream, name.startswith("seed")), original)
        self._patches += script_data.install(self._on_loss_target)
        self._start_states = rng_fingerprints(torch.device("cpu"))
        self._handles.append(optim_mod.register_optimizer_step_pre_hook(self._pre_step))
        self._handles.append(optim_mod.register_optimizer_step_post_hook(self._post_step))
        reg = nn.modules.module
        self._top_handles = [reg.register_module_forward_pre_hook(self._top_pre),
                             reg.register_module_forward_hook(self._top_post, always_call=True)]
        if self.detail:
            self._recorder = ModuleRecorder(None, keep_outputs=self.lockstep is not None)
        if self.draws is not None:
            self.draws.install()

    def _patch_backward(self) -> None:
        """``torch.autograd.backward`` (``Tensor.backward`` goes through it) and
        ``torch.autograd.grad``: the losses, and the steps when they are backward passes."""
        tracer = self
        original_backward, original_grad = torch.autograd.backward, torch.autograd.grad

        def backward(tensors, *args, **kwargs):
            outer = tracer._backward_depth == 0
            if outer:
                tracer._before_backward(tensors)
            tracer._backward_depth += 1
            try:
                result = original_backward(tensors, *args, **kwargs)
            finally:
                tracer._backward_depth -= 1
            if outer:
                tracer._after_backward(None)
            return result

        def grad(outputs, inputs, *args, **kwargs):
            outer = tracer._backward_depth == 0 and tracer.counting != "optimizer"
            if outer:
                tracer._before_backward(outputs)
            tracer._backward_depth += 1
            try:
                result = original_grad(outputs, inputs, *args, **kwargs)
            finally:
                tracer._backward_depth -= 1
            if outer:
                tracer._after_backward({id(t): g for t, g in zip(tensors_in(inputs), result)})
            return result

        self._patch(torch.autograd, "backward", backward, original_backward)
        self._patch(torch.autograd, "grad", grad, original_grad)

    def _seeding(self, original, stream: str, seed_call: bool):
        def wrapper(*args, **kwargs):
            value = args[0] if args else next(iter(kwargs.values()), None)
            if seed_call and value is None:  # seed(None) draws from the OS again
                self._seeded.discard(stream)
            else:
                self._seeded.add(stream)
            return original(*args, **kwargs)

        return wrapper

    def _patch(self, owner, name: str, replacement, original) -> None:
        replacement.__wrapped__ = original
        replacement.__name__ = getattr(original, "__name__", name)
        replacement.__doc__ = getattr(original, "__doc__", None)
        setattr(owner, name, replacement)
        self._patches.append((owner, name, original))

    def uninstall(self) -> None:
        if self.scan is not None and self._mine():
            self.scan.finish(self._device())
        if self._patches and self._mine():
            if self._pending is not None:  # the last backward pass's step, after its update
                self._flush(final=True)
            self._check_globals(rng_fingerprints(torch.device("cpu")))
        if self.draws is not None:  # first: its wrappers wrap the tracer's
            draws, self.draws = self.draws, None
            draws.finish()
        for owner, name, original in reversed(self._patches):
            setattr(owner, name, original)
        self._patches = []
        for handle in self._handles + self._top_handles:
            handle.remove()
        self._handles, self._top_handles = [], []
        self._outputs.close()
        if self._recorder is not None:
            self._recorder.close()

    def shutdown_loaders(self) -> None:
        """Stop the worker processes of every DataLoader iterator still alive (a run stopped
        mid-epoch leaves them waiting)."""
        for it in list(self._iterators):
            try:
                it._shutdown_workers()
            except Exception:
                pass

    # ------------------------------------------------------------------ what the script does

    def _mine(self) -> bool:
        return os.getpid() == self._pid

    def _main_thread(self) -> bool:
        return self._mine() and threading.get_ident() == self._thread

    def _register(self, opt) -> None:
        if opt not in self._opt_index:
            self._opt_index[opt] = len(self.optimizers)
            self.optimizers.append(weakref.ref(opt))

    def _device(self) -> torch.device:
        if torch.cuda.is_initialized():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def _on_batch(self, it, data) -> None:
        if not self._mine():
            return
        if getattr(it, "_num_workers", 0):
            self._iterators.add(it)
        if threading.get_ident() != self._thread:
            return  # a prefetching thread: when it fetches is timing, not training
        if self.stopped:
            raise StopScript()
        try:
            inputs, targets = split_batch(data)
            self._batches.append(_Batch(inputs, targets, keep=self.lockstep is not None))
        except Exception:  # a batch no fingerprint can read (sparse, nested types): skip it
            return
        self._rng = rng_fingerprints(self._device())

    def _on_loss_target(self, target: torch.Tensor) -> None:
        """A target given to a functional loss outside the model, while training."""
        if self._depth or self._in_loader or target.grad_fn is not None \
                or not torch.is_grad_enabled() or not self._main_thread():
            return
        try:
            self._targets.append(fp.fingerprint(target))
        except Exception:
            return
        if self.lockstep is not None:
            self._target_tensors.append(target.detach())

    def _counts(self, module) -> bool:
        """Module calls that nest: the model's (not a loss module, not a data transform)."""
        return not (self._in_loader or script_data.is_loss_module(module))

    def _top_pre(self, module, args) -> None:
        if not self._counts(module):
            return
        if self._depth == 0 and self._main_thread():
            self._at_top(args)
            if self.scan is not None and self._begun and self.done:  # the second step
                self.scan.start(self.naming.module_names, module, args)
        self._depth += 1

    def _top_post(self, module, args, output) -> None:
        if self._counts(module):
            self._depth = max(self._depth - 1, 0)
            if self._depth == 0 and self._main_thread():
                self._outputs.record(module, args, output)

    def _at_top(self, args) -> None:
        """A top-level call of the model: what it receives, the RNG state, and (once the
        parameters are known) the parameters at the start of the step."""
        if self._fed is None and torch.is_grad_enabled():
            try:
                tensors = [t for t in tensors_in(args) if t.grad_fn is None]
                self._fed = combine(fp.fingerprints(tensors))
            except Exception:
                tensors, self._fed = [], 0
            if self.lockstep is not None:
                self._fed_tensors = [t.detach() for t in tensors]
        if self._rng is None:
            self._rng = rng_fingerprints(self._device())
        if self._start is None and self._begun and self.counting == "optimizer" and self.done:
            self._start = fp.fingerprints(self.params)
            if self.lockstep is not None:
                self._start_copies = {n: p.detach().clone() for n, p in zip(self.names, self.params)}

    # ------------------------------------------------------------------ the step

    def _decide(self) -> None:
        """What a step is: an optimizer step when the script made an optimizer before it
        first trained, else a backward pass."""
        self.counting = "optimizer" if self._live_optimizers() else "backward"

    def _before_backward(self, tensors) -> None:
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
            if self._rng is None:
                self._rng = rng_fingerprints(self._device())
        for t in tensors_in(tensors):
            self._losses.append(t.detach())
        if self.scan is not None:
            self.scan.backward(tensors)

    def _after_backward(self, grads_by_id: Optional[dict]) -> None:
        if self.counting != "backward" or not self._begun or not self._mine():
            return
        if self.scan is not None:
            self.scan.finish(self._device())
        grads = [grads_by_id.get(id(p)) if grads_by_id is not None else p.grad for p in self.params]
        copies = None
        if self.lockstep is not None:
            copies = {n: g.detach().clone() for n, g in zip(self.names, grads) if g is not None}
        scanned = grad_parts(grads)
        self._finite = scanned.finite
        self._pending = self._take(scanned.values, copies)

    def _pre_step(self, optimizer, args, kwargs) -> Optional[tuple]:
        if not self._mine():
            return None
        if self.counting is None:
            self._decide()
        if self.counting != "optimizer":
            return None
        if self.stopped:
            raise StopScript()
        if self.scan is not None:
            self.scan.finish(self._device())
        self._register(optimizer)
        wrapped = self._wrap_closure(args, kwargs)
        if not self._begun:
            self.closures = wrapped is not None
            self._begin()
        elif self._traced.get(optimizer) != _count(optimizer):
            self._extend()
        if wrapped is None:  # the gradients are there already
            self._grads, self._finite, self._grad_copies = self._read_grads()
        else:  # forward and backward run inside the step: read after each evaluation
            self._evaluations = []
        if self._rng is None:
            self._rng = rng_fingerprints(self._device())
        return wrapped

    def _read_grads(self) -> tuple:
        return read_grads(self.params, self.names, self.lockstep is not None)

    def _wrap_closure(self, args: tuple, kwargs: dict) -> Optional[tuple]:
        """``optimizer.step(closure)`` (``args[0]`` is the optimizer) or ``step(closure=...)``:
        the step's (args, kwargs) with the closure wrapped by :meth:`_evaluated`, else None."""
        if callable(kwargs.get("closure")):
            return args, dict(kwargs, closure=self._evaluated(kwargs["closure"]))
        if len(args) > 1 and callable(args[1]):
            return (args[0], self._evaluated(args[1]), *args[2:]), kwargs
        return None

    def _evaluated(self, closure: Callable) -> Callable:
        """``closure`` (forward and backward, as Lightning's automatic optimization and LBFGS
        run them inside the step), read after each call: its return value is the loss."""
        tracer = self

        def evaluate(*args, **kwargs):
            mark = len(tracer._losses)
            result = closure(*args, **kwargs)
            tracer._after_closure(result, mark)
            return result

        return evaluate

    def _after_closure(self, result, mark: int) -> None:
        """One evaluation of a step's closure ended; its gradients are read. The step's loss
        is the first evaluation's return value (what ``step`` returns; the tensors its backward
        ran from when it returns none) and its outputs the first evaluation's: later ones
        (LBFGS's line search) run at parameters the optimizer moved, and count through their
        gradients."""
        if self._evaluations is None or not self._main_thread():
            return
        if self.scan is not None:
            self.scan.finish(self._device())
        first = not self._evaluations
        returned = [t.detach() for t in tensors_in(result)]
        if isinstance(result, float):
            returned = [torch.tensor(result)]
        if returned or not first:
            for _ in range(max(len(self._losses) - mark, 0)):
                self._losses.pop()
        if first:
            self._losses.extend(returned)
            self._closure_outputs = self._outputs.take()
        else:
            self._outputs.take()
        self._evaluations.append(self._read_grads())

    def _closure_grads(self) -> None:
        """The step's gradients from its closure's evaluations (:func:`combine_evaluations`)."""
        evaluations, self._evaluations = self._evaluations, None
        if not evaluations:  # an optimizer that never called the closure
            evaluations = [self._read_grads()]
        self._grads, self._finite, self._grad_copies = combine_evaluations(evaluations)

    def _post_step(self, optimizer, args, kwargs) -> None:
        if not self._mine() or self.counting != "optimizer":
            return
        if self._evaluations is not None:
            self._closure_grads()
        if self._grads is None:
            return
        self._write(self._take(self._grads, self._grad_copies), self._opt_index.get(optimizer))

    def _flush(self, final: bool = False) -> None:
        step, self._pending = self._pending, None
        self._write(step, None, final=final)

    def _take(self, grads: list, grad_copies: Optional[dict]) -> _Step:
        """The step's gatherings so far; the buffers start again for the next step."""
        events = outputs = None
        if self._recorder is not None:
            events = [[self.naming.module_name(e[0]), e[1], e[2], e[3]] for e in self._recorder.events]
            outputs = {f"{self.naming.module_name(m)}#{call}": t
                       for (m, call), t in self._recorder.outputs.items()}
            self._recorder.reset()
        rng = {k: v for k, v in (self._rng or {}).items() if k not in OS_SEEDED or k in self._seeded}
        self._check_globals(self._rng or {})
        step = _Step(batches=list(self._batches), fed=self._fed, fed_tensors=self._fed_tensors,
                     targets=list(self._targets), target_tensors=list(self._target_tensors),
                     losses=list(self._losses), rng=rng, grads=grads, grad_copies=grad_copies,
                     start=self._start, start_copies=self._start_copies, events=events,
                     outputs=outputs, model_outputs=self._model_outputs(), finite=self._finite)
        self._reset_step()
        return step

    def _model_outputs(self):
        """The step's model outputs: its closure's first evaluation's, or all of the step's."""
        outputs = self._outputs.take()
        return outputs if self._closure_outputs is None else self._closure_outputs

    def _data_parts(self, step: _Step) -> tuple:
        """(inputs, targets, input rows, target rows, extra fields) of a step's record."""
        extra = {}
        if step.start is not None:
            extra["start"] = step.start
        targets = combine(step.targets)
        if self.source == "dataloader":
            batches = step.batches
            if step.fed is not None:
                extra["fed"] = [step.fed]
            if step.targets:
                extra["loss_targets"] = [targets]
            return (combine([v for b in batches for v in b.inputs]),
                    combine([v for b in batches for v in b.targets]),
                    [b.input_rows for b in batches], [b.target_rows for b in batches], extra)
        fed = step.fed if step.fed is not None else 0
        return fed, targets, ([fed] if step.fed is not None else []), \
            ([targets] if step.targets else []), extra

    def _write(self, step: _Step, optimizer: Optional[int], final: bool = False) -> None:
        inputs, targets, input_rows, target_rows, extra = self._data_parts(step)
        optim_state = None
        if self.detail:
            optim_state = [t for opt in self._live_optimizers()
                           for t in optimizer_state_tensors(opt, self.params)]
        record = {"type": Record.STEP, "step": self.done}
        record.update(step_fields(inputs, targets, input_rows, target_rows, step.losses,
                                  step.grads, self.params, optim_state=optim_state,
                                  events=step.events, outputs=step.model_outputs,
                                  grads_finite=step.finite, extra=extra))
        now = time.perf_counter()
        record.update(rng=step.rng, seconds=round(now - self._last, 6), optimizer=optimizer,
                      batches=len(step.batches))
        self._last = now
        if self.lockstep is not None:
            diffs = self.lockstep.exchange(self.done, self._lockstep_tensors(step))
            if diffs is not None:
                record["diffs"] = diffs
        self.writer.write(record)
        self.done += 1
        if self.on_step is not None:
            self.on_step(self.done)
        if self.done >= self.steps:
            self.stopped = True
            if not final:
                raise StopScript()

    def _check_globals(self, states: dict) -> None:
        """A global generator the script never seeded whose state moved: the script (or a
        library it calls) draws from OS-seeded randomness. Logged as an escape."""
        watched = self.draws.reported() if self.draws is not None else set()
        for stream, kind in OS_SEEDED.items():
            if stream in self._seeded or stream in self._reported or stream in watched \
                    or stream not in states \
                    or states[stream] == self._start_states.get(stream):
                continue
            self._reported.add(stream)
            if self.escape_log:
                owner = "NumPy's" if stream == "numpy" else "Python's random module's"
                line = {"kind": kind, "where": None, "pid": os.getpid(),
                        "detail": f"{owner} global generator is drawn from but never seeded "
                                  "(it starts from the operating system's entropy)"}
                with open(self.escape_log, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(line) + "\n")

    def _lockstep_tensors(self, step: _Step) -> dict:
        loader = [b.tensors for b in step.batches if b.tensors]
        fed, targets = step.fed_tensors or [], step.target_tensors or []
        tensors = {"grads": step.grad_copies or {}, "outputs": step.outputs or {},
                   "params": {n: p.detach() for n, p in zip(self.names, self.params)},
                   "start": step.start_copies or {}}
        if self.source == "dataloader":
            tensors.update(inputs=[t for b in loader for t in b[0]],
                           targets=[t for b in loader for t in b[1]], fed=fed, loss_targets=targets)
        else:
            tensors.update(inputs=fed, targets=targets)
        return tensors

    def _live_optimizers(self) -> list:
        return [opt for opt in (ref() for ref in self.optimizers) if opt is not None]

    # ------------------------------------------------------------------ naming

    def _begin(self, tensors=None) -> None:
        """First step: name what is traced, write the header, the init and env records."""
        self._begun = True
        self._thread = threading.get_ident()
        if self.draws is not None:
            self.draws.settle()
        self.source = "dataloader" if self._batches else "module_inputs"
        if self.counting == "optimizer":
            self._add_params(self._live_optimizers())
        else:
            self._add_leaves(tensors)
        header = self._header()
        self.writer.write(header)
        self.writer.write(init_record(self.params, self.names, self.lockstep))
        device = self.params[0].device if self.params else self._device()
        try:
            environment = self.environment(device) if self.environment else {}
        except Exception as exc:  # a missing version is no reason to lose the run
            environment = {"device": str(device), "error": f"{type(exc).__name__}: {exc}"}
        sources = {}
        for root, label in self.naming.roots:
            for name, where in knobs.module_sources(root).items():
                sources[join(label, name)] = where
        code = code_fingerprint([root for root, _ in self.naming.roots])
        self.writer.write({"type": Record.ENV, "environment": environment, "module_sources": sources,
                           "code": code,
                           "synthetic": False, "description": self._describe(header),
                           "counting": self.counting})

    def _extend(self) -> None:
        """An optimizer made (or given parameters) after the first step: trace its parameters
        too; a new ``params`` record names them (compare keeps the first header's names)."""
        before = len(self.params)
        self._add_params(self._live_optimizers())
        if len(self.params) > before:
            self.writer.write(self._header())

    def _header(self) -> dict:
        optimizers = []
        for opt in self._live_optimizers():
            ids = {id(p) for g in opt.param_groups for p in g["params"]}
            optimizers.append({"index": self._opt_index[opt], "class": type(opt).__name__,
                               "params": [n for n, p in zip(self.names, self.params) if id(p) in ids]})
        if self.counting == "backward":
            optimizers = []
        return {"type": Record.PARAMS, "names": list(self.names), "modules": self.naming.modules(),
                "types": self.naming.types(),
                "shapes": [list(p.shape) for p in self.params], "optimizers": optimizers,
                "counting": self.counting, "data_source": self.source}

    def _describe(self, header: dict) -> str:
        if self.counting == "backward":
            steps = (f"a step is one backward pass (the script makes no torch.optim optimizer "
                     f"step; the {len(self.params)} tensors it trains are followed)")
        else:
            opts = ", ".join(f"opt{o['index']}={o['class']} ({len(o['params'])} tensors)"
                             for o in header["optimizers"])
            steps = f"a step is one optimizer step ({opts})"
            if self.closures:
                steps += (", given a closure: the loss is its return value and the gradients "
                          "are read after its backward pass; where the optimizer evaluates it "
                          "several times (LBFGS), the loss and outputs are the first "
                          "evaluation's and the gradients every evaluation's")
        data = ("the batches DataLoaders yield before each step" if self.source == "dataloader"
                else "the tensors given to the first module call of each step (no DataLoader batch "
                     "before the first step)")
        return (f"script mode: {steps}; the data compared: {data}, and the targets given to "
                "the loss")

    def _add_params(self, optimizers: list) -> None:
        new, groups = [], {}
        for opt in optimizers:
            index = self._opt_index[opt]
            groups[index] = {id(p) for g in opt.param_groups for p in g["params"]}
            for g, group in enumerate(opt.param_groups):
                for j, p in enumerate(group["params"]):
                    if id(p) not in self._param_ids:
                        self._param_ids.add(id(p))
                        new.append((index, f"opt{index}.group{g}.{j}", p))
            self._traced[opt] = _count(opt)
        if new:
            self.names += self.naming.name_tensors(new, groups)
            self.params += [p for _, _, p in new]

    def _add_leaves(self, tensors) -> None:
        """Backward counting: the tensors the first backward pass trains, in model order."""
        leaves = [t for t in graph_leaves(tensors) if t.requires_grad]
        new = [(None, f"leaf{i}", p) for i, p in enumerate(leaves)]
        names = self.naming.name_tensors(new, {})
        order = {}
        for root, _ in self.naming.roots:
            for q in root.parameters():
                order.setdefault(id(q), len(order))
        ranked = sorted(range(len(new)), key=lambda i: (order.get(id(leaves[i]), len(order)), i))
        self.params = [leaves[i] for i in ranked]
        self.names = [names[i] for i in ranked]
        self._param_ids = {id(p) for p in self.params}


def _count(opt) -> int:
    return sum(len(g["params"]) for g in opt.param_groups)
