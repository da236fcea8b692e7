"""What script mode gathers during one step, until the step is taken and written.

:class:`StepState` holds the current step's

* **batches**: those DataLoaders gave since the last step, fingerprinted as they arrive; and
  wherever the data come from, what the model receives (``fed``: the tensors given to the
  step's first top-level module call with gradients on) and what the loss compares with (the
  targets given to the functional losses, :mod:`probes.script.data`);
* **the RNG states**: when the last batch arrives (else at the first module call, else just
  before the update);
* **the parameters at the start of the step** (``start``, optimizer steps after the first: at
  the step's first top-level module call, so a change made between two updates is seen where
  it was made);
* **the loss**: every tensor a backward pass ran from since the last step (a closure's: its
  first evaluation's return value); **the outputs**: those of the model's top-level calls with
  gradients on (:class:`probes.run.trace.OutputRecorder`); **the gradients** (of each evaluation
  of a closure given to the step).

:meth:`StepState.take` hands them over as a :class:`Step` and starts again for the next step.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable, Optional

import torch

from audit.probes.run import fingerprint as fp
from audit.probes.run.trace import (ModuleRecorder, OutputRecorder, batch_parts, combine,
                                    combine_evaluations, grad_parts, rng_fingerprints)
from audit.probes.run.training import split_batch, tensors_in
from audit.probes.script.names import Naming
from audit.probes.script.params import TracedParams

#: Batches kept per step: the ones fetched last before the update (accumulation included).
MAX_BATCHES = 32
#: Loss tensors kept per step.
MAX_LOSSES = 64


def current_device() -> torch.device:
    """The device the script trains on: CUDA's current one once CUDA is in use, else the CPU."""
    if torch.cuda.is_initialized():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _parts(tensors: list[torch.Tensor]) -> tuple[list[Any], Any]:
    """Each tensor's fingerprint and the batch's rows part (:func:`batch_parts`), every
    tensor read once."""
    if len(tensors) == 1:
        whole, rows = batch_parts(tensors)
        return [whole], rows
    values = fp.fingerprints(tensors)
    return values, (combine(values) if values else [])


class Batch:
    """One fetched batch, fingerprinted on arrival."""

    __slots__ = ("inputs", "targets", "input_rows", "target_rows", "tensors")

    def __init__(self, inputs: list[torch.Tensor], targets: list[torch.Tensor], keep: bool):
        self.inputs, self.input_rows = _parts(inputs)
        self.targets, self.target_rows = _parts(targets)
        self.tensors = (inputs, targets) if keep else None


@dataclasses.dataclass(slots=True, eq=False)  # compared and hashed by identity, as before
class Step:
    """What one step gathered, taken when its gradients are known; written with the
    parameters after its update."""

    batches: list[Batch]
    fed: Any
    fed_tensors: Optional[list[torch.Tensor]]
    targets: list[Any]
    target_tensors: list[torch.Tensor]
    losses: list[torch.Tensor]
    rng: dict[str, Any]
    grads: list[Any]
    grad_copies: Optional[dict[str, torch.Tensor]]
    start: Optional[list[Any]]
    start_copies: Optional[dict[str, torch.Tensor]]
    events: Optional[list[list[Any]]]
    outputs: Optional[dict[str, Any]]
    model_outputs: Any
    finite: fp.Fingerprint


class StepState:
    """The current step's gatherings (see the module's docstring)."""

    def __init__(self) -> None:
        self.batches: collections.deque[Batch] = collections.deque(maxlen=MAX_BATCHES)
        self.losses: collections.deque[torch.Tensor] = collections.deque(maxlen=MAX_LOSSES)
        self.outputs = OutputRecorder([])  # the models' top-level outputs of each step
        self.reset()

    def reset(self) -> None:
        self.batches.clear()
        self.losses.clear()
        self.fed: Any = None
        self.fed_tensors: Optional[list[torch.Tensor]] = None
        self.targets: list[Any] = []
        self.target_tensors: list[torch.Tensor] = []
        self.rng: Optional[dict[str, Any]] = None
        self.grads: Optional[list[Any]] = None
        self.grad_copies: Optional[dict[str, torch.Tensor]] = None
        self.start: Optional[list[Any]] = None
        self.start_copies: Optional[dict[str, torch.Tensor]] = None
        self.finite: fp.Fingerprint = 1  # the finite flag of the step's gradients (grad_parts)
        # A step given a closure: each of its evaluations' (grads, finite, copies), else None
        self.evaluations: Optional[list[tuple[Any, ...]]] = None
        self.closure_outputs: Any = None  # its first evaluation's model outputs

    # ------------------------------------------------------------------ what the step gathers

    def add_batch(self, data: Any, keep: bool) -> None:
        """A batch the DataLoader gave (``keep``: its tensors too, for lockstep)."""
        try:
            inputs, targets = split_batch(data)
            self.batches.append(Batch(inputs, targets, keep=keep))
        except Exception:  # a batch no fingerprint can read (sparse, nested types): skip it
            return
        self.rng = rng_fingerprints(current_device())

    def add_target(self, target: torch.Tensor, keep: bool) -> None:
        """A target given to a functional loss (``keep``: the tensor too, for lockstep)."""
        try:
            self.targets.append(fp.fingerprint(target))
        except Exception:
            return
        if keep:
            self.target_tensors.append(target.detach())

    def at_top(self, args: tuple[Any, ...], keep: bool, traced: Optional[TracedParams]) -> None:
        """A top-level call of the model: what it receives, the RNG state, and (``traced``:
        once the parameters are known, after the first step) the parameters at the start of
        the step."""
        if self.fed is None and torch.is_grad_enabled():
            try:
                tensors = [t for t in tensors_in(args) if t.grad_fn is None]
                self.fed = combine(fp.fingerprints(tensors))
            except Exception:
                tensors, self.fed = [], 0
            if keep:
                self.fed_tensors = [t.detach() for t in tensors]
        if self.rng is None:
            self.rng = rng_fingerprints(current_device())
        if self.start is None and traced is not None:
            self.start = fp.fingerprints(traced.params)
            if keep:
                self.start_copies = {n: p.detach().clone()
                                     for n, p in zip(traced.names, traced.params)}

    def take(self, grads: list[Any], grad_copies: Optional[dict[str, torch.Tensor]],
             rng: dict[str, Any], recorder: Optional[ModuleRecorder], naming: Naming) -> Step:
        """The step's gatherings so far (``rng``: the states to write; ``recorder``: detail
        mode's module events and outputs); the buffers start again for the next step."""
        events = outputs = None
        if recorder is not None:
            events = [[naming.module_name(e[0]), e[1], e[2], e[3]] for e in recorder.events]
            outputs = {f"{naming.module_name(m)}#{call}": t
                       for (m, call), t in recorder.outputs.items()}
            recorder.reset()
        step = Step(batches=list(self.batches), fed=self.fed, fed_tensors=self.fed_tensors,
                    targets=list(self.targets), target_tensors=list(self.target_tensors),
                    losses=list(self.losses), rng=rng, grads=grads, grad_copies=grad_copies,
                    start=self.start, start_copies=self.start_copies, events=events,
                    outputs=outputs, model_outputs=self._model_outputs(), finite=self.finite)
        self.reset()
        return step

    def _model_outputs(self) -> Any:
        """The step's model outputs: its closure's first evaluation's, or all of the step's."""
        outputs = self.outputs.take()
        return outputs if self.closure_outputs is None else self.closure_outputs

    def backward_grads(self, grads_by_id: Optional[dict[int, Any]], traced: TracedParams,
                       keep: bool) -> tuple[list[Any], Optional[dict[str, torch.Tensor]]]:
        """A backward pass's gradients of the traced tensors (``grads_by_id``: what
        ``torch.autograd.grad`` returned, else their ``.grad``): their :func:`grad_parts`
        values and (``keep``) copies; the step's finite flag is theirs."""
        grads = [grads_by_id.get(id(p)) if grads_by_id is not None else p.grad for p in traced.params]
        copies = None
        if keep:
            copies = {n: g.detach().clone() for n, g in zip(traced.names, grads) if g is not None}
        scanned = grad_parts(grads)
        self.finite = scanned.finite
        return scanned.values, copies

    # ------------------------------------------------------------------ a step's closure

    def evaluated(self, result: Any, mark: int, grads: Callable[[], tuple[Any, ...]]) -> None:
        """One evaluation of the step's closure ended (``result``: what it returned; ``mark``:
        how many losses were kept before it); ``grads()`` reads its gradients. The step's loss
        is the first evaluation's return value (what ``step`` returns; the tensors its backward
        ran from when it returns none) and its outputs the first evaluation's: later ones
        (LBFGS's line search) run at parameters the optimizer moved, and count through their
        gradients."""
        assert self.evaluations is not None
        first = not self.evaluations
        returned = [t.detach() for t in tensors_in(result)]
        if isinstance(result, float):
            returned = [torch.tensor(result)]
        if returned or not first:
            for _ in range(max(len(self.losses) - mark, 0)):
                self.losses.pop()
        if first:
            self.losses.extend(returned)
            self.closure_outputs = self.outputs.take()
        else:
            self.outputs.take()
        self.evaluations.append(grads())

    def closure_grads(self, grads: Callable[[], tuple[Any, ...]]) -> None:
        """The step's gradients from its closure's evaluations (:func:`combine_evaluations`);
        ``grads()`` reads them for an optimizer that never called the closure."""
        evaluations, self.evaluations = self.evaluations, None
        if not evaluations:
            evaluations = [grads()]
        self.grads, self.finite, self.grad_copies = combine_evaluations(evaluations)
