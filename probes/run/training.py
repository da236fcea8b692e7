"""The training step every audit drives: one protocol, whatever the target supplied.

A :class:`TrainingSetup` is the target after normalization (:mod:`audit.probes.run.target`
builds it from the user's callable): a model, a re-iterable of batches, and how to turn a batch
into a scalar loss. :func:`cycle_batches` re-iterates the data when it runs out, as epochs do.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Generator, Iterable, Iterator, Optional

import torch
from torch import nn


def default_optimizer(params: Iterable[torch.Tensor]) -> torch.optim.Optimizer:
    """The optimizer used when the target names none: plain SGD with momentum."""
    return torch.optim.SGD(params, lr=0.01, momentum=0.9)


@dataclass
class TrainingSetup:
    model: nn.Module
    data: Iterable[Any]
    loss: Callable[..., Any] = nn.functional.cross_entropy
    optimizer: Callable[..., Any] = default_optimizer  # callable(params) -> Optimizer
    step: Optional[Callable[..., Any]] = None  # callable(model, batch, loss) -> scalar loss
    scheduler: Optional[Callable[..., Any]] = None  # callable(optimizer) -> LR scheduler, stepped per step
    evaluate: Optional[Callable[..., Any]] = None  # callable(model) -> float | dict[str, float]
    save: Optional[Callable[..., Any]] = None  # callable(path, objects): the user's checkpoint code
    load: Optional[Callable[..., Any]] = None  # callable(path, objects)
    synthetic: bool = False  # data made by the tool for a bare module
    description: str = ""


def make_scheduler(setup: TrainingSetup, optimizer: torch.optim.Optimizer) -> Any:
    """The target's LR scheduler for ``optimizer``, or None when it gives none."""
    return setup.scheduler(optimizer) if setup.scheduler is not None else None


def optimizer_step(optimizer: torch.optim.Optimizer, scheduler: Any = None,
                   closure: Optional[Callable[[], Any]] = None) -> None:
    """One update, and the scheduler's step after it (as every audit's loop does). ``closure``
    (:func:`step_closure`) is given to an optimizer whose ``step`` takes one: LBFGS needs it
    and evaluates it several times."""
    if closure is not None and takes_closure(optimizer):
        optimizer.step(closure)
    else:
        optimizer.step()
    if scheduler is not None:
        scheduler.step()


def takes_closure(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step`` has a ``closure`` parameter."""
    try:
        return "closure" in inspect.signature(optimizer.step).parameters
    except (TypeError, ValueError):
        return False


def step_closure(setup: TrainingSetup, optimizer: torch.optim.Optimizer, batch: Any,
                 loss: torch.Tensor, after: Optional[Callable[[], None]] = None) -> Callable[..., Any]:
    """``optimizer.step``'s closure for a step whose forward and backward the loop has run:
    the first call returns that ``loss``; each later one (LBFGS's line search, at parameters
    the optimizer moved) clears the gradients, runs forward and backward on ``batch`` again and
    returns its loss, and ``after()`` then sees the new gradients."""
    calls: list[int] = []

    def closure() -> torch.Tensor:
        if not calls:
            calls.append(1)
            return loss.detach()
        optimizer.zero_grad(set_to_none=True)
        again = compute_loss(setup, batch)
        again.backward()
        if after is not None:
            after()
        return again.detach()

    return closure


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a (nested) batch to ``device``; other values pass through."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=False)
    if isinstance(batch, (list, tuple)):
        moved = [to_device(b, device) for b in batch]
        return type(batch)(moved) if not hasattr(batch, "_fields") else type(batch)(*moved)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def split_batch(batch: Any) -> tuple[list[Any], list[Any]]:
    """(input tensors, target tensors) of a batch; everything counts as input if not a pair."""
    if isinstance(batch, (list, tuple)) and len(batch) == 2 and not hasattr(batch, "_fields"):
        return tensors_in(batch[0]), tensors_in(batch[1])
    return tensors_in(batch), []


def tensors_in(obj: Any) -> list[Any]:
    """Every tensor inside a nested structure, in a stable order."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in tensors_in(item)]
    if isinstance(obj, dict):
        return [t for key in sorted(obj, key=str) for t in tensors_in(obj[key])]
    return []


def compute_loss(setup: TrainingSetup, batch: Any) -> torch.Tensor:
    """Forward pass and loss for one batch, through the target's ``step`` when it has one."""
    if setup.step is not None:
        return setup.step(setup.model, batch, setup.loss)
    if not (isinstance(batch, (list, tuple)) and len(batch) == 2):
        raise TypeError(
            "a batch is not an (inputs, targets) pair; give the target a 'step' callable "
            "(model, batch, loss) -> scalar loss"
        )
    inputs, targets = batch
    return setup.loss(setup.model(inputs), targets)


def data_length(data: Iterable[Any]) -> Optional[int]:
    """Batches in one pass over ``data`` (``len``), or None when it has no length."""
    try:
        length = len(data)  # type: ignore[arg-type]
    except TypeError:
        return None
    return length if length > 0 else None


def set_sampler_epoch(data: Any, epoch: int) -> None:
    """Tell the loader's samplers which epoch begins, as Lightning's loop does: its
    ``sampler``, ``batch_sampler`` and ``batch_sampler.sampler`` get ``set_epoch(epoch)`` when
    they have one (a shuffling ``DistributedSampler`` then draws a new order each epoch)."""
    batch_sampler = getattr(data, "batch_sampler", None)
    seen = set()
    for sampler in (getattr(data, "sampler", None), batch_sampler,
                    getattr(batch_sampler, "sampler", None)):
        if sampler is not None and id(sampler) not in seen and callable(getattr(sampler, "set_epoch", None)):
            seen.add(id(sampler))
            sampler.set_epoch(epoch)


def cycle_batches(data: Iterable[Any], steps: int, start: int = 0,
                  open_pass: Optional[Callable[[int], Iterator[Any]]] = None) -> Generator[tuple[int, Any], None, None]:
    """Yield ``(step, batch)`` for steps ``start`` .. ``steps - 1``, starting a new pass over
    ``data`` when it ends (as epochs do). Before each pass the loader's samplers are told its
    epoch (:func:`set_sampler_epoch`): the loop is the audit's, so it does what a training
    loop does.

    A resumed run (``start`` > 0) picks up where step ``start`` left the data as far as the
    tool can know: pass ``start // len(data)``, after skipping ``start % len(data)`` batches of
    a fresh pass (without a length: ``start`` batches from the beginning). ``open_pass(epoch)``
    opens a pass (default ``iter(data)``).
    """
    open_pass = open_pass or (lambda epoch: iter(data))
    length = data_length(data) if start else None
    epoch, skip = divmod(start, length) if length else (0, start)
    step = start
    while step < steps:
        produced = False
        set_sampler_epoch(data, epoch)
        for batch in open_pass(epoch):
            produced = True
            if skip:
                skip -= 1
                continue
            yield step, batch
            step += 1
            if step >= steps:
                return
        if not produced:
            raise ValueError("the target's data yielded no batches")
        epoch += 1


@dataclass
class LiveObjects:
    """The live objects of a run, as a target's ``save``/``load`` receive them."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    data: Iterable[Any]

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler,
                "data": self.data}


def infer_input_shape(model: nn.Module) -> tuple[Any, ...]:
    """A plausible per-sample input shape for a bare module, from its first layer."""
    for module in model.modules():
        if isinstance(module, nn.Conv1d):
            return (module.in_channels, 64)
        if isinstance(module, nn.Conv2d):
            side = 224 if module.in_channels == 3 and module.kernel_size[0] >= 7 else 32
            return (module.in_channels, side, side)
        if isinstance(module, nn.Conv3d):
            return (module.in_channels, 16, 16, 16)
        if isinstance(module, nn.Linear):
            return (module.in_features,)
    raise ValueError(
        "cannot tell what input this model takes; pass --input-shape, e.g. --input-shape 3,32,32"
    )


def infer_num_classes(model: nn.Module) -> int:
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module
    return last.out_features if last is not None else 10


def synthetic_batches(input_shape: tuple[Any, ...], num_classes: int, batch_size: int, count: int,
                      seed: int) -> list[Any]:
    """Fixed random ``(inputs, targets)`` batches for a bare module; the same for every run."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        inputs = torch.randn((batch_size, *input_shape), generator=gen)
        targets = torch.randint(0, num_classes, (batch_size,), generator=gen)
        batches.append((inputs, targets))
    return batches
