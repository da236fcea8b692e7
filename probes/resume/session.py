"""One run of ``audit resume`` inside the worker: uninterrupted, interrupted, or resumed.

Both roles share the traced training loop (:func:`probes.run.trace.run_traced`); the session only
adds what each role does around it:

* ``a`` (uninterrupted): trains S steps without stopping. After step K-1 it writes its
  ``state`` record, saves every piece for the tool's knobs, and calls the target's
  ``save(path, objects)`` (or saves what most tutorials save: the model's and the optimizer's
  state dicts), then keeps training, as a training run that checkpoints does. It is also the
  interrupted run: what it saved at K is what a run stopped right after saving leaves behind.
* ``c`` (resumed): after building the run's objects, calls the target's ``load(path, objects)``
  (or the default load), restores the pieces its knobs name, writes its ``state`` record, and
  trains steps K .. S-1 from where step K left the data (:func:`probes.run.training.cycle_batches`).
"""
from __future__ import annotations

import functools
import inspect
import os
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch

from audit.probes.errors import TargetError, UsageError
from audit.probes.resume import loader, pieces
from audit.probes.resume.state import state_record
from audit.probes.run.spec import ResumeSpec
from audit.probes.run.training import LiveObjects, TrainingSetup, data_length
from audit.probes.results.records import Record

#: Epochs up to this many batches get defaults that cross an epoch boundary.
AUTO_EPOCH_LIMIT = 16
FALLBACK = (12, 5)  # (steps, at) when the epoch is long or its length unknown


@dataclass(frozen=True)
class Plan:
    """Steps S, checkpoint step K and the epoch length, as the runs agree on them."""

    steps: int
    at: int
    epoch_length: Optional[int]
    auto: bool = False

    @property
    def skip(self) -> int:
        """Batches into its epoch the resumed run starts at."""
        return self.at % self.epoch_length if self.epoch_length else self.at


def choose_plan(steps: Optional[int], at: Optional[int], length: Optional[int]) -> Plan:
    """Defaults that catch the common failures: K inside the second epoch (not on a boundary),
    S past the next epoch boundary. Raises :class:`UsageError` for an impossible pair."""
    auto = steps is None or at is None
    if length and length <= AUTO_EPOCH_LIMIT:
        d_at = length + max(1, length // 2)
        d_steps = (d_at // length + 1) * length + max(2, length // 2)
    else:
        d_steps, d_at = FALLBACK
    if at is None:
        at = d_at if steps is None or d_at < steps else max(1, steps // 2)
    if steps is None:
        steps = max(d_steps, at + 2)
    if not 0 < at < steps:
        raise UsageError(f"--at {at} must lie between 1 and --steps - 1 ({steps - 1}); "
                         "checkpoint inside the run")
    return Plan(steps, at, length, auto)


def where(fn: Any) -> Optional[str]:
    """``file.py:LINE`` of a user's callable, when Python can tell."""
    try:
        while isinstance(fn, functools.partial):
            fn = fn.func
        fn = inspect.unwrap(getattr(fn, "__func__", fn))
        source = inspect.getsourcefile(fn)
        if source is None:
            return None
        return f"{os.path.basename(source)}:{inspect.getsourcelines(fn)[1]}"
    except (TypeError, OSError):
        return None


def default_save(path: str, objects: dict[str, Any]) -> None:
    """What most tutorials save: the model's and the optimizer's state dicts."""
    torch.save({"model": objects["model"].state_dict(),
                "optimizer": objects["optimizer"].state_dict()}, path)


def default_load(path: str, objects: dict[str, Any]) -> None:
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    objects["model"].load_state_dict(checkpoint["model"])
    objects["optimizer"].load_state_dict(checkpoint["optimizer"])


class Session:
    """What one role does around the shared loop (see the module docstring)."""

    def __init__(self, role: str, plan: Plan, setup: TrainingSetup, folder: str, knobs: list[str],
                 device: Any = None) -> None:
        self.role, self.plan, self.setup, self.knobs = role, plan, setup, knobs
        self.device = device if device is not None else torch.device("cpu")
        self.path = os.path.join(folder, "checkpoint.pt")
        self.tool_path = os.path.join(folder, "audit-pieces.pt")
        self.scalers = pieces.find_scalers(setup)
        self.recorder = loader.PassRecorder(setup.data)
        self.start = plan.at if role == "c" else 0
        self.steps = plan.steps
        self._record: Optional[loader.PassRecord] = None

    def loaded(self, live: LiveObjects, writer: Any) -> None:
        """Resumed run: load the checkpoint, restore the knobs' pieces, write the state."""
        if self.role != "c":
            return
        load = self.setup.load or default_load
        try:
            load(self.path, live.as_dict())
        except Exception as exc:
            who = "the target's load" if self.setup.load else "loading the checkpoint"
            raise TargetError(f"{who} raised {type(exc).__name__}: {exc}; fix it so it reads "
                              "back what save wrote") from None
        if self.knobs:
            snap = torch.load(self.tool_path, map_location="cpu", weights_only=False)
            self._record = pieces.pass_record(snap)
            for knob in self.knobs:
                pieces.restore(knob, snap, live, self.scalers)
        writer.write(state_record(live, self.scalers, self.plan.at, self.device))

    def open_pass(self, epoch: int) -> Iterator[Any]:
        data = self.setup.data
        if self.role == "a":
            return self.recorder.open_pass(epoch)
        length = self.plan.epoch_length
        first = self.role == "c" and epoch == (self.plan.at // length if length else 0)
        if first and self.plan.skip and loader.is_loader(data):
            return loader.resumed_pass(data, self.plan.skip, tuple(self.knobs), self._record)
        return iter(data)

    def stepped(self, live: LiveObjects, done: int, writer: Any) -> None:
        if done != self.plan.at or self.role == "c":
            return
        writer.write(state_record(live, self.scalers, done, self.device))
        torch.save(pieces.snapshot(live, self.scalers, self.recorder.record()), self.tool_path)
        save = self.setup.save or default_save
        try:
            save(self.path, live.as_dict())
        except Exception as exc:
            who = "the target's save" if self.setup.save else "saving the checkpoint"
            raise TargetError(f"{who} raised {type(exc).__name__}: {exc}; fix it so the "
                              "checkpoint can be written") from None


def open_session(spec: ResumeSpec, setup: TrainingSetup, device: Any, steps: Optional[int],
                 writer: Any) -> Session:
    """The session a worker spec's ``resume`` entry asks for; writes the ``plan`` record."""
    if (setup.save is None) != (setup.load is None):
        given = "save" if setup.save is not None else "load"
        raise TargetError(f"the target gives '{given}' but not its partner; give both 'save' "
                          "and 'load', or neither for the default checkpoint")
    plan = choose_plan(steps or None, spec.at, data_length(setup.data))
    session = Session(spec.role, plan, setup, spec.folder, pieces.known(spec.knobs), device)
    writer.write({
        "type": Record.PLAN, "steps": plan.steps, "at": plan.at, "epoch_length": plan.epoch_length,
        "auto": plan.auto, "skip": plan.skip, "checkpoint": "target" if setup.save else "default",
        "save_where": where(setup.save) if setup.save else None,
        "load_where": where(setup.load) if setup.load else None,
        "loader": loader.is_loader(setup.data), "workers": loader.uses_workers(setup.data),
        "scalers": len(session.scalers), "buffers": any(True for _ in setup.model.buffers()),
        "scheduler": setup.scheduler is not None,
    })
    return session
