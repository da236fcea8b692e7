"""The trace records script mode writes: the same as :func:`probes.run.trace.run_traced`'s.

At the first step :meth:`TraceRecords.begin` writes the ``params`` header (with ``counting``:
``optimizer`` or ``backward``, and ``data_source``), the ``init`` record (the parameters before
any update) and the ``env`` record (the environment, the sources of the models' modules, the
code's fingerprint and a description of what a step is); :meth:`TraceRecords.header` a new
header when more parameters are traced; :meth:`TraceRecords.write_step` one ``step`` record per
:class:`probes.script.step.Step` (exchanging its tensors with the replay partner in lockstep).
With a DataLoader the data compared are its batches, and ``fed`` and ``loss_targets`` say what
the model received and what the loss compared with; without, those are the step's ``inputs``
and ``targets``.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional

import torch

from audit.probes.results.records import Record
from audit.probes.run import knobs
from audit.probes.run.environment import code_fingerprint
from audit.probes.run.lockstep import Lockstep
from audit.probes.run.trace import (TraceWriter, combine, init_record, optimizer_state_tensors,
                                    step_fields)
from audit.probes.script.names import join
from audit.probes.script.params import TracedParams
from audit.probes.script.step import Step, current_device


class TraceRecords:
    """The records of one traced run, written to ``writer``. ``source``: where the data
    compared come from, ``dataloader`` or ``module_inputs`` (set at the first step)."""

    def __init__(self, writer: TraceWriter, traced: TracedParams, detail: bool,
                 lockstep: Optional[Lockstep],
                 environment: Optional[Callable[[torch.device], dict[str, Any]]]):
        self.writer, self.traced, self.detail = writer, traced, detail
        self.lockstep, self.environment = lockstep, environment
        self.source = "none"
        self._last = time.perf_counter()

    def begin(self, counting: Optional[str], closures: bool) -> None:
        """The first step's header, ``init`` and ``env`` records."""
        traced = self.traced
        header = self.header(counting)
        self.writer.write(header)
        self.writer.write(init_record(traced.params, traced.names, self.lockstep))
        device = traced.params[0].device if traced.params else current_device()
        try:
            environment = self.environment(device) if self.environment else {}
        except Exception as exc:  # a missing version is no reason to lose the run
            environment = {"device": str(device), "error": f"{type(exc).__name__}: {exc}"}
        sources = {}
        for root, label in traced.naming.roots:
            for name, where in knobs.module_sources(root).items():
                sources[join(label, name)] = where
        code = code_fingerprint([root for root, _ in traced.naming.roots])
        self.writer.write({"type": Record.ENV, "environment": environment, "module_sources": sources,
                           "code": code,
                           "synthetic": False, "description": self._describe(header, counting, closures),
                           "counting": counting})

    def header(self, counting: Optional[str]) -> dict[str, Any]:
        traced = self.traced
        optimizers = [] if counting == "backward" else traced.optimizers_header()
        return {"type": Record.PARAMS, "names": list(traced.names), "modules": traced.naming.modules(),
                "types": traced.naming.types(),
                "shapes": [list(p.shape) for p in traced.params], "optimizers": optimizers,
                "counting": counting, "data_source": self.source}

    def _describe(self, header: dict[str, Any], counting: Optional[str], closures: bool) -> str:
        if counting == "backward":
            steps = (f"a step is one backward pass (the script makes no torch.optim optimizer "
                     f"step; the {len(self.traced.params)} tensors it trains are followed)")
        else:
            opts = ", ".join(f"opt{o['index']}={o['class']} ({len(o['params'])} tensors)"
                             for o in header["optimizers"])
            steps = f"a step is one optimizer step ({opts})"
            if closures:
                steps += (", given a closure: the loss is its return value and the gradients "
                          "are read after its backward pass; where the optimizer evaluates it "
                          "several times (LBFGS), the loss and outputs are the first "
                          "evaluation's and the gradients every evaluation's")
        data = ("the batches DataLoaders yield before each step" if self.source == "dataloader"
                else "the tensors given to the first module call of each step (no DataLoader batch "
                     "before the first step)")
        return (f"script mode: {steps}; the data compared: {data}, and the targets given to "
                "the loss")

    def write_step(self, step: Step, number: int, optimizer: Optional[int]) -> None:
        """Step ``number``'s record (``optimizer``: the index of the one that stepped)."""
        inputs, targets, input_rows, target_rows, extra = self._data_parts(step)
        optim_state = None
        params = self.traced.params
        if self.detail:
            optim_state = [t for opt in self.traced.live_optimizers()
                           for t in optimizer_state_tensors(opt, params)]
        record: dict[str, Any] = {"type": Record.STEP, "step": number}
        record.update(step_fields(inputs, targets, input_rows, target_rows, step.losses,
                                  step.grads, params, optim_state=optim_state,
                                  events=step.events, outputs=step.model_outputs,
                                  grads_finite=step.finite, extra=extra))
        now = time.perf_counter()
        record.update(rng=step.rng, seconds=round(now - self._last, 6), optimizer=optimizer,
                      batches=len(step.batches))
        self._last = now
        if self.lockstep is not None:
            diffs = self.lockstep.exchange(number, self._lockstep_tensors(step))
            if diffs is not None:
                record["diffs"] = diffs
        self.writer.write(record)

    def _data_parts(self, step: Step) -> tuple[Any, Any, list[Any], list[Any], dict[str, list[Any]]]:
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

    def _lockstep_tensors(self, step: Step) -> dict[str, Any]:
        loader = [b.tensors for b in step.batches if b.tensors]
        fed, targets = step.fed_tensors or [], step.target_tensors or []
        tensors: dict[str, Any] = {"grads": step.grad_copies or {}, "outputs": step.outputs or {},
                   "params": {n: p.detach() for n, p in zip(self.traced.names, self.traced.params)},
                   "start": step.start_copies or {}}
        if self.source == "dataloader":
            tensors.update(inputs=[t for b in loader for t in b[0]],
                           targets=[t for b in loader for t in b[1]], fed=fed, loss_targets=targets)
        else:
            tensors.update(inputs=fed, targets=targets)
        return tensors
