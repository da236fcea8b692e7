"""Global generators drawn from before the script seeds them, or never seeded (script mode).

None of the global generators is fixed at start-up: torch's default generator (CPU and CUDA)
starts from a seed that differs in every fresh process (``torch.initial_seed()``), as Python's
``random`` and NumPy's global generator do. A script that builds its model, splits its data
(``random_split``) or shuffles before it calls ``torch.manual_seed`` gets other numbers in every
run. :class:`DrawWatch` records, per generator, the first draw made before any seeding call, at
the innermost line of the user's code, and the first seeding call after it:

* torch: a ``TorchFunctionMode`` compares the default generators' states around each torch call
  while no draw from them is known and they are not seeded; it stands aside (is removed) when
  torch is seeded and at the script's first step;
* NumPy and Python: the module-level functions bound to the global generator
  (``np.random.rand``, ``random.shuffle``, ...);
* seeding: ``torch.manual_seed``, ``torch.cuda.manual_seed(_all)``, ``torch.set_rng_state``,
  ``np.random.seed`` / ``set_state``, ``random.seed`` / ``setstate`` with a seed. A state handed
  back that this process's own getter gave out (``torch.get_rng_state``, ``np.random.get_state``,
  ``random.getstate``) is a restore, not a seed: Lightning's ``isolate_rng`` around its sanity
  check, ``torch.utils.checkpoint`` and ``fork_rng`` restore states taken from the unseeded
  generator; a state loaded from a checkpoint file does seed.

:meth:`DrawWatch.finish` writes each unseeded draw to the escape log (:mod:`probes.run.escape_log`),
where attribution proves it with the ``seed_escapes`` knob (the bootstrap then seeds every global
generator at start-up).
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from audit.probes.run import escape_log, rng_escape
from audit.probes.script.patch import swap

#: The escape kinds, per generator.
KINDS = {
    "torch": "torch global generator",
    "torch_cuda": "torch CUDA global generator",
    "numpy": "numpy global generator",
    "python": "python random global generator",
}
_NOT_DRAWS = {"seed", "getstate", "setstate", "get_state", "set_state"}
#: The getters whose states, handed back to the setters, restore rather than seed.
_GETTERS = ((torch, "get_rng_state", "torch"), (np.random, "get_state", "numpy"),
            (random, "getstate", "python"))
#: The setters: the stream each sets.
_SETTERS = {"set_rng_state": "torch", "set_state": "numpy", "setstate": "python"}


@dataclass
class Draw:
    """The first draw from a global generator before it was seeded."""

    stream: str
    where: str
    op: str
    seeded_at: Optional[str] = None  # the first seeding call after it, if any


class _TorchDraws(TorchFunctionMode):
    """Sees torch calls that advance a default generator while the watch wants them."""

    def __init__(self, watch: "DrawWatch"):
        super().__init__()
        self.watch = watch

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (),
                           kwargs: Optional[dict[str, Any]] = None) -> Any:
        kwargs = kwargs or {}
        if not self.watch.wants("torch"):
            return func(*args, **kwargs)
        before = _torch_states()
        result = func(*args, **kwargs)
        after = _torch_states()
        for stream in ("torch", "torch_cuda"):
            if before.get(stream) is not None and not _same(before[stream], after.get(stream)):
                self.watch.drew(stream, getattr(func, "__name__", "a torch call"))
        return result


def _torch_states() -> dict[str, torch.Tensor]:
    states = {"torch": torch.default_generator.get_state()}
    if torch.cuda.is_initialized():
        try:
            states["torch_cuda"] = torch.cuda.get_rng_state()
        except RuntimeError:
            pass
    return states


def _same(a: torch.Tensor, b: Optional[torch.Tensor]) -> bool:
    return b is not None and torch.equal(a, b)


class DrawWatch:
    """Install before the script runs; :meth:`settle` at its first step (an optimizer step or,
    without optimizers, a backward pass: the watch of torch calls ends there); :meth:`finish`
    at the end writes what it saw."""

    def __init__(self, escape_log: Optional[str]):
        self.escape_log = escape_log
        self.first: dict[str, Draw] = {}
        self.seeded: dict[str, Optional[str]] = {}  # stream -> where it was first seeded
        self._patches: list[tuple[Any, str, Any]] = []  # (owner, name, original)
        self._mode: Optional[_TorchDraws] = None
        self._pid = os.getpid()
        self._skip = rng_escape.library_dirs()
        self._handed: dict[str, set[int]] = {}  # stream -> digests of the states given out

    def wants(self, stream: str) -> bool:
        """Still looking for a first unseeded draw from ``stream`` (torch: CPU or CUDA)?"""
        if os.getpid() != self._pid:
            return False
        if stream != "torch":
            return stream not in self.seeded and stream not in self.first
        cuda = torch.cuda.is_initialized() and "torch_cuda" not in self.seeded \
            and "torch_cuda" not in self.first
        return cuda or ("torch" not in self.seeded and "torch" not in self.first)

    def drew(self, stream: str, op: str) -> None:
        if stream in self.seeded or stream in self.first or os.getpid() != self._pid:
            return
        where = rng_escape.user_frame(self._skip)
        if where is not None:  # a library drawing while it is imported is not the script's
            self.first[stream] = Draw(stream, where, op)

    def _seed(self, streams: tuple[str, ...]) -> None:
        if os.getpid() != self._pid:
            return
        where = rng_escape.user_frame(self._skip)
        for stream in streams:
            if stream not in self.seeded:
                self.seeded[stream] = where
                if stream in self.first and self.first[stream].seeded_at is None:
                    self.first[stream].seeded_at = where
        if "torch" in streams:
            self._stand_aside()

    # ------------------------------------------------------------------ install / remove

    def install(self) -> None:
        try:
            self._install()
        except Exception:
            self.finish(write=False)
            raise

    def _install(self) -> None:
        for owner, name, streams in ((torch, "manual_seed", ("torch", "torch_cuda")),
                                     (torch, "set_rng_state", ("torch",)),
                                     (torch.cuda, "manual_seed", ("torch_cuda",)),
                                     (torch.cuda, "manual_seed_all", ("torch_cuda",)),
                                     (np.random, "seed", ("numpy",)),
                                     (np.random, "set_state", ("numpy",)),
                                     (random, "seed", ("python",)),
                                     (random, "setstate", ("python",))):
            self._wrap(owner, name, self._seeding(getattr(owner, name), streams,
                                                  restores=name in _SETTERS))
        for owner, name, stream in _GETTERS:
            self._wrap(owner, name, self._handing(getattr(owner, name), stream))
        for module, instance, stream in ((random, random._inst, "python"),
                                         (np.random, np.random.mtrand._rand, "numpy")):
            for name in dir(module):
                function = getattr(module, name)
                if getattr(function, "__self__", None) is instance and name not in _NOT_DRAWS:
                    self._wrap(module, name, self._drawing(function, stream, name))
        self._mode = _TorchDraws(self)
        self._mode.__enter__()

    def _seeding(self, original: Callable[..., Any], streams: tuple[str, ...],
                 restores: bool = False) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            value = args[0] if args else next(iter(kwargs.values()), None)
            # seed(None) draws from the OS again, and a state this process gave out restores
            # the unseeded generator: neither is a seed
            if value is not None and not (restores and self._gave_out(streams[0], value)):
                self._seed(streams)
            return original(*args, **kwargs)

        return wrapper

    def _handing(self, original: Callable[..., Any], stream: str) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            state = original(*args, **kwargs)
            self._handed.setdefault(stream, set()).add(_digest(state))
            return state

        return wrapper

    def _gave_out(self, stream: str, state: Any) -> bool:
        return _digest(state) in self._handed.get(stream, ())

    def _drawing(self, original: Callable[..., Any], stream: str, name: str) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if stream not in self.seeded and stream not in self.first:
                self.drew(stream, name)
            return original(*args, **kwargs)

        return wrapper

    def _wrap(self, owner: Any, name: str, replacement: Any) -> None:
        self._patches.append((owner, name, swap(owner, name, replacement)))

    def _stand_aside(self) -> None:
        """Remove the torch mode when it is the innermost one (else it stays, inert)."""
        mode = self._mode
        if mode is None or torch._C._len_torch_function_stack() == 0:
            return
        if torch._C._get_function_stack_at(torch._C._len_torch_function_stack() - 1) is mode:
            mode.__exit__(None, None, None)
            self._mode = None

    def settle(self) -> None:
        """The first step: draws from torch before it are known; stop watching torch calls."""
        self._stand_aside()

    def finish(self, write: bool = True) -> None:
        """Put every wrapped name back and write the unseeded draws to the escape log."""
        self._stand_aside()
        for owner, name, original in reversed(self._patches):
            setattr(owner, name, original)
        self._patches = []
        if write and self.escape_log and os.getpid() == self._pid:
            escape_log.append(self.escape_log, [_escape(draw) for draw in self.first.values()])

    def reported(self) -> set[str]:
        """The generators whose first unseeded draw this watch has seen."""
        return set(self.first)


def _digest(state: Any) -> int:
    """A number that tells generator states apart within this process (a torch ByteTensor,
    NumPy's ``get_state`` tuple or dict, Python's ``getstate`` tuple)."""
    if isinstance(state, torch.Tensor):
        return hash(state.detach().cpu().numpy().tobytes())
    if isinstance(state, np.ndarray):
        return hash(state.tobytes())
    if isinstance(state, dict):
        return hash(tuple((k, _digest(v)) for k, v in sorted(state.items())))
    if isinstance(state, (tuple, list)):
        return hash(tuple(_digest(part) for part in state))
    try:
        return hash(state)
    except TypeError:
        return id(state)


def _escape(draw: Draw) -> dict[str, Any]:
    if draw.seeded_at:
        detail = (f"drawn from ({draw.op}) before the script seeds it; it is first seeded at "
                  f"{draw.seeded_at}")
    else:
        detail = (f"drawn from ({draw.op}) and never seeded: it starts from another state in "
                  "every process")
    return {"kind": KINDS[draw.stream], "where": draw.where, "detail": detail,
            "seeded_at": draw.seeded_at, "pid": os.getpid()}
