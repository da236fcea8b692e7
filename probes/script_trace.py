"""Tracing a training script the audit did not write (script mode).

:class:`ScriptTracer` installs process-wide hooks before the script's own code runs and writes
the same trace as :func:`probes.trace.run_traced`, with one record per optimizer step:

* **the step**: ``torch.optim`` global step hooks. Before each ``optimizer.step()`` the
  gradients of every traced parameter are fingerprinted; after it the parameters (and in
  detail mode the optimizer state and every module call since the last step). The first step
  writes the ``params`` header, the ``init`` record (the parameters before any update) and the
  ``env`` record. Every optimizer the script made is traced; with several models, names carry
  a prefix that says which optimizer's model parted (``opt1.main.0.weight``).
* **the batch**: DataLoader iteration (``_BaseDataLoaderIter.__next__``): the batches fetched
  since the last step, fingerprinted as they arrive (the last few; a long validation pass
  between steps is not kept). A script without a DataLoader: the tensors given to the first
  top-level module call of each step.
* **the RNG states**: when the last batch arrives (else at that first module call, else just
  before the update).
* **the loss**: ``torch.autograd.backward`` (``Tensor.backward`` goes through it): every
  tensor backward ran from since the last step.
* **detail mode**: global module hooks (a :class:`probes.trace.ModuleRecorder` without a
  model), named at each step from the models found at the first step.

After ``steps`` steps the post-step hook raises :class:`StopScript`, a ``BaseException`` the
script's ``except Exception`` cannot swallow; the bootstrap catches it and ends the run.
Modules are named from the outermost module that holds each optimizer's parameters, found
once with a scan of the live objects.
"""
from __future__ import annotations

import collections
import gc
import json
import os
import random
import threading
import time
import warnings
import weakref
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from audit.probes import fingerprint as fp
from audit.probes.determinism import knobs
from audit.probes.trace import (ModuleRecorder, OutputRecorder, TraceWriter, combine, finite_flag,
                                grad_parts, init_record, optimizer_state_tensors, rng_fingerprints,
                                row_part, step_fields)
from audit.probes.training import split_batch, tensors_in

#: Batches kept per step: the ones fetched last before the update (accumulation included).
MAX_BATCHES = 32
#: Loss tensors kept per step.
MAX_LOSSES = 64
#: Global generators Python and NumPy seed from the OS at start-up: their states are compared
#: once the script seeds them; a script that draws from one it never seeded is an escape of the
#: seed. torch's default generator is not fixed at start-up either (``torch.initial_seed()``
#: differs in every process), but a torch state that differs is always compared: the draws
#: made before seeding are :mod:`probes.rng_draws`' to find.
OS_SEEDED = {"numpy": "numpy.random.seed(not called)", "python": "random.seed(not called)"}


class StopScript(BaseException):
    """Raised from the optimizer hook once the steps asked for are done (not an ``Exception``,
    so the script's own ``except Exception`` lets it through)."""


class _Batch:
    """One fetched batch, fingerprinted on arrival."""

    __slots__ = ("inputs", "targets", "input_rows", "target_rows", "tensors")

    def __init__(self, inputs: list, targets: list, keep: bool):
        self.inputs = [fp.fingerprint(t) for t in inputs]
        self.targets = [fp.fingerprint(t) for t in targets]
        self.input_rows = row_part(inputs)
        self.target_rows = row_part(targets)
        self.tensors = (inputs, targets) if keep else None


def _live_modules() -> list:
    """Every ``nn.Module`` alive in the process (``type()`` checks: no attribute lookups on
    foreign objects)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [o for o in gc.get_objects() if issubclass(type(o), nn.Module)]


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
        self.draws = draws  # a probes.rng_draws.DrawWatch, or None
        self._seeded: set = set()  # OS-seeded global generators the script has seeded
        self._start_states: dict = {}
        self._reported: set = set()
        self.done = 0
        self.stopped = False
        self.params: list = []  # traced parameters, in optimizer then group order
        self.names: list = []
        self.optimizers: list = []  # [weakref], creation order: the index in "opt{i}"
        self._opt_index = weakref.WeakKeyDictionary()
        self._traced = weakref.WeakKeyDictionary()  # optimizer -> parameter count traced
        self._param_ids: set = set()
        self._roots: list = []  # [(root module, label)]
        self.module_names: dict = {}  # module -> dotted name (with its root's label)
        self._extra_names: dict = {}
        self._batches = collections.deque(maxlen=MAX_BATCHES)
        self._losses = collections.deque(maxlen=MAX_LOSSES)
        self._top_inputs: Optional[list] = None
        self._rng: Optional[dict] = None
        self._grads: Optional[list] = None
        self._finite = 1  # finite_flag of the gradients seen at the last optimizer step
        self._grad_copies: Optional[dict] = None
        self._depth = 0
        self._backward_depth = 0
        self._begun = False
        self._thread = threading.get_ident()  # the thread that steps the optimizer
        self._iterators = weakref.WeakSet()
        self._handles: list = []
        self._top_handles: list = []
        self._patches: list = []
        self._recorder: Optional[ModuleRecorder] = None
        self._outputs = OutputRecorder([])  # the models' top-level outputs of each step
        self._pid = os.getpid()
        self._last = time.perf_counter()
        self.source = "none"  # where the data compared come from: "dataloader" | "module_inputs"

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
            data = original_next(it)
            tracer._on_batch(it, data)
            return data

        self._patch(dataloader._BaseDataLoaderIter, "__next__", loader_next, original_next)

        original_backward = torch.autograd.backward

        def backward(tensors, *args, **kwargs):
            if tracer._backward_depth == 0:
                tracer._on_backward(tensors)
            tracer._backward_depth += 1
            try:
                return original_backward(tensors, *args, **kwargs)
            finally:
                tracer._backward_depth -= 1

        self._patch(torch.autograd, "backward", backward, original_backward)

        for owner, name, stream in ((np.random, "seed", "numpy"), (np.random, "set_state", "numpy"),
                                    (random, "seed", "python"), (random, "setstate", "python")):
            original = getattr(owner, name)
            self._patch(owner, name, self._seeding(original, stream, name.startswith("seed")), original)
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
        if self._patches and self._mine():
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

    def _on_backward(self, tensors) -> None:
        if not self._mine():
            return
        for t in tensors_in(tensors):
            self._losses.append(t.detach())

    def _top_pre(self, module, args) -> None:
        if self._depth == 0 and self._top_inputs is None and self._mine() \
                and threading.get_ident() == self._thread:
            try:
                self._top_inputs = [fp.fingerprint(t) for t in tensors_in(args) if t.grad_fn is None]
            except Exception:
                self._top_inputs = []
            if self._rng is None:
                self._rng = rng_fingerprints(self._device())
        self._depth += 1

    def _top_post(self, module, args, output) -> None:
        self._depth = max(self._depth - 1, 0)
        if self._depth == 0 and threading.get_ident() == self._thread:
            self._outputs.record(module, args, output)

    # ------------------------------------------------------------------ the step

    def _pre_step(self, optimizer, args, kwargs) -> None:
        if not self._mine():
            return
        if self.stopped:
            raise StopScript()
        self._register(optimizer)
        if not self._begun:
            self._begin()
        elif self._traced.get(optimizer) != _count(optimizer):
            self._extend()
        self._grads = grad_parts([p.grad for p in self.params])
        self._finite = finite_flag([p.grad for p in self.params])
        if self.lockstep is not None:
            self._grad_copies = {n: p.grad.detach().clone() for n, p in zip(self.names, self.params)
                                 if p.grad is not None}
        if self._rng is None:
            self._rng = rng_fingerprints(self._device())

    def _post_step(self, optimizer, args, kwargs) -> None:
        if not self._mine() or self._grads is None:
            return
        batches = list(self._batches)
        if self.source == "dataloader":
            inputs = combine([v for b in batches for v in b.inputs])
            targets = combine([v for b in batches for v in b.targets])
            input_rows = [b.input_rows for b in batches]
            target_rows = [b.target_rows for b in batches]
        elif self.source == "module_inputs" and self._top_inputs is not None:
            inputs, targets = combine(self._top_inputs), 0
            input_rows, target_rows = [combine(self._top_inputs)], []
        else:
            inputs, targets, input_rows, target_rows = 0, 0, [], []
        events = None
        if self._recorder is not None:
            events = [[self._module_name(e[0]), e[1], e[2], e[3]] for e in self._recorder.events]
        optim_state = None
        if self.detail:
            optim_state = [t for opt in self._live_optimizers()
                           for t in optimizer_state_tensors(opt, self.params)]
        record = {"type": "step", "step": self.done}
        record.update(step_fields(inputs, targets, input_rows, target_rows, list(self._losses),
                                  self._grads, self.params, optim_state=optim_state, events=events,
                                  outputs=self._outputs.take(), grads_finite=self._finite))
        now = time.perf_counter()
        rng = {k: v for k, v in (self._rng or {}).items() if k not in OS_SEEDED or k in self._seeded}
        self._check_globals(self._rng or {})
        record.update(rng=rng, seconds=round(now - self._last, 6),
                      optimizer=self._opt_index.get(optimizer), batches=len(batches))
        self._last = now
        if self.lockstep is not None:
            diffs = self.lockstep.exchange(self.done, self._lockstep_tensors(batches))
            if diffs is not None:
                record["diffs"] = diffs
        self.writer.write(record)
        self.done += 1
        self._batches.clear()
        self._losses.clear()
        self._top_inputs, self._rng, self._grads, self._grad_copies = None, None, None, None
        if self._recorder is not None:
            self._recorder.reset()
        if self.done >= self.steps:
            self.stopped = True
            raise StopScript()

    def _check_globals(self, states: dict) -> None:
        """A global generator the script never seeded whose state moved: the script (or a
        library it calls) draws from OS-seeded randomness. Logged as an escape."""
        watched = self.draws.reported() if self.draws is not None else set()
        for stream, kind in OS_SEEDED.items():
            if stream in self._seeded or stream in self._reported or stream in watched \
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

    def _lockstep_tensors(self, batches: list) -> dict:
        outputs = {f"{self._module_name(m)}#{call}": t
                   for (m, call), t in (self._recorder.outputs if self._recorder else {}).items()}
        return {"inputs": [t for b in batches if b.tensors for t in b.tensors[0]],
                "targets": [t for b in batches if b.tensors for t in b.tensors[1]],
                "grads": self._grad_copies or {},
                "params": {n: p.detach() for n, p in zip(self.names, self.params)},
                "outputs": outputs}

    def _live_optimizers(self) -> list:
        return [opt for opt in (ref() for ref in self.optimizers) if opt is not None]

    # ------------------------------------------------------------------ naming

    def _begin(self) -> None:
        """First step: name what is traced, write the header, the init and env records."""
        self._begun = True
        self._thread = threading.get_ident()
        if self.draws is not None:
            self.draws.settle()
        self.source = "dataloader" if self._batches else "module_inputs"
        if self.source == "dataloader":
            for handle in self._top_handles:  # the data come from DataLoaders: no module hooks
                handle.remove()
            self._top_handles = []
        self._add_params(self._live_optimizers())
        if not self._top_handles:  # the outputs from the models' own hooks from now on
            self._outputs.watch([root for root, _ in self._roots])
        header = self._header()
        self.writer.write(header)
        self.writer.write(init_record(self.params, self.names, self.lockstep))
        device = self.params[0].device if self.params else self._device()
        try:
            environment = self.environment(device) if self.environment else {}
        except Exception as exc:  # a missing version is no reason to lose the run
            environment = {"device": str(device), "error": f"{type(exc).__name__}: {exc}"}
        sources = {}
        for root, label in self._roots:
            for name, where in knobs.module_sources(root).items():
                sources[_join(label, name)] = where
        self.writer.write({"type": "env", "environment": environment, "module_sources": sources,
                           "synthetic": False, "description": self._describe(header)})

    def _extend(self) -> None:
        """An optimizer made (or given parameters) after the first step: trace its parameters
        too; a new ``params`` record names them (compare keeps the first header's names)."""
        before, roots = len(self.params), len(self._roots)
        self._add_params(self._live_optimizers())
        if not self._top_handles:
            self._outputs.watch([root for root, _ in self._roots[roots:]])
        if len(self.params) > before:
            self.writer.write(self._header())

    def _header(self) -> dict:
        optimizers = []
        for opt in self._live_optimizers():
            ids = {id(p) for g in opt.param_groups for p in g["params"]}
            optimizers.append({"index": self._opt_index[opt], "class": type(opt).__name__,
                               "params": [n for n, p in zip(self.names, self.params) if id(p) in ids]})
        return {"type": "params", "names": list(self.names),
                "modules": [n for root, label in self._roots
                            for n in (_join(label, m) for m, _ in root.named_modules())],
                "types": [type(m).__name__ for root, _ in self._roots for _, m in root.named_modules()],
                "shapes": [list(p.shape) for p in self.params], "optimizers": optimizers}

    def _describe(self, header: dict) -> str:
        opts = ", ".join(f"opt{o['index']}={o['class']} ({len(o['params'])} tensors)"
                         for o in header["optimizers"])
        data = ("the batches DataLoaders yield before each optimizer step" if self.source == "dataloader"
                else "the tensors given to the first module call of each step (no DataLoader batch "
                     "before the first step)")
        return f"script mode: a step is one optimizer step ({opts}); the data compared: {data}"

    def _add_params(self, optimizers: list) -> None:
        new = []  # (optimizer index, group, position, param)
        for opt in optimizers:
            index = self._opt_index[opt]
            for g, group in enumerate(opt.param_groups):
                for j, p in enumerate(group["params"]):
                    if id(p) not in self._param_ids:
                        self._param_ids.add(id(p))
                        new.append((index, g, j, p))
            self._traced[opt] = _count(opt)
        if not new:
            return
        modules = _live_modules()
        parent, owner = {}, {}
        for m in modules:
            for child in getattr(m, "_modules", {}).values():
                if child is not None:
                    parent.setdefault(id(child), m)
            for p in getattr(m, "_parameters", {}).values():
                if p is not None:
                    owner.setdefault(id(p), m)
        known = {id(r) for r, _ in self._roots}
        fresh, root_opts, root_of = [], {}, {}
        for index, _, _, p in new:
            m = owner.get(id(p))
            if m is None:
                continue
            seen = set()
            while id(m) in parent and id(m) not in seen:
                seen.add(id(m))
                m = parent[id(m)]
            root_of[id(p)] = m
            root_opts.setdefault(id(m), set()).add(index)
            if id(m) not in known:
                known.add(id(m))
                fresh.append(m)
        for opt in optimizers:  # a root's other optimizers, for the labels
            for g in opt.param_groups:
                for p in g["params"]:
                    if id(p) in root_of:
                        root_opts[id(root_of[id(p)])].add(self._opt_index[opt])
        roots = [r for r, _ in self._roots] + fresh
        for k, root in enumerate(fresh, start=len(self._roots)):
            label = self._label(root, k, roots, root_opts)
            self._roots.append((root, label))
            for name, module in root.named_modules():
                self.module_names.setdefault(module, _join(label, name))
        named = {}
        for root, label in self._roots:
            for name, q in root.named_parameters():
                named.setdefault(id(q), _join(label, name))
        for index, g, j, p in new:
            self.names.append(named.get(id(p), f"opt{index}.group{g}.{j}"))
            self.params.append(p)

    def _label(self, root, k: int, roots: list, root_opts: dict) -> str:
        """No prefix for a single model; with several, the optimizer that trains it alone
        (``opt1``), else ``model{k}``."""
        if len(roots) == 1 and not self._roots:
            return ""
        opts = root_opts.get(id(root), set())
        if len(opts) == 1 and sum(root_opts.get(id(r)) == opts for r in roots) == 1:
            return f"opt{next(iter(opts))}"
        return f"model{k}"

    def _module_name(self, module) -> str:
        name = self.module_names.get(module)
        if name is None:  # not inside a traced model (a loss module, a transform): its class
            name = self._extra_names.get(module)
            if name is None:
                base = type(module).__name__
                count = sum(1 for v in self._extra_names.values() if v.rsplit("_", 1)[0] == base or v == base)
                name = base if count == 0 else f"{base}_{count}"
                self._extra_names[module] = name
        return name


def _join(label: str, name: str) -> str:
    return f"{label}.{name}" if label and name else (label or name)


def _count(opt) -> int:
    return sum(len(g["params"]) for g in opt.param_groups)
