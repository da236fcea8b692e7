"""Seeing randomness that escapes the matched seed, with the file and line that made it.

:func:`install` wraps the constructors and reseeding calls that draw entropy from the OS or
the clock: NumPy ``default_rng()`` / ``RandomState()`` / ``seed()`` without a seed,
``random.Random()`` and ``random.seed()`` without one, ``random.SystemRandom``,
``torch.seed()``, ``torch.Generator().seed()``, and any of these (plus ``torch.manual_seed``)
given a seed that is the current time. Each call is recorded once per place as an
:class:`Escape` and appended to the escape log (:mod:`probes.run.escape_log`), so that
DataLoader worker processes report too.

With ``pin=True`` (the ``unseeded_rng`` knob of the attribution reruns) each such call gets a
seed derived from its place and occurrence instead, the same in every run: if that removes the
divergence, the escape is proven to be the cause.

The place is the innermost line of the user's code (:func:`origin`); a generator a library made
also names the library call that line made (``made_by``). Each generator made is handed to
:mod:`probes.run.rng_use`, and :func:`finish` writes, at the end of the compared steps, what became
of each escape's generators (drawn from, reseeded before their first draw, unused).
"""
from __future__ import annotations

import os
import random
import sys
import time
import zlib
from dataclasses import dataclass
from types import FrameType
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch

from audit.probes.run import escape_log, rng_use, seed_log
from audit.probes.run.escape_log import read_log  # noqa: F401 (re-exported: its readers import it here)
from audit.probes.run.processes import CELLS, is_user_file, library_dirs, place  # noqa: F401 (re-exported)

_state: dict[str, Any] = {"log": None, "pin": False, "seen": {}, "count": {}, "installed": False,
                "pin_sites": frozenset(), "site_count": {}, "building": 0, "pid": None}


@dataclass
class Escape:
    kind: str
    where: Optional[str]
    detail: str = ""
    made_by: Optional[str] = None  # the library call the user's line made it through
    names: Optional[dict[str, Any]] = None  # the globals of the user's code there (to find its holder)


def user_frame(skip_dirs: tuple[str, ...]) -> Optional[str]:
    """``file:line`` of the innermost frame that is the user's code, not ours or a library's."""
    frame: Optional[FrameType] = sys._getframe(2)
    fallback = None
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename.startswith("<frozen importlib"):
            return None  # a library making a generator while it is imported: not the user's
        path = os.path.abspath(filename) if not filename.startswith("<") else filename
        if filename in CELLS or (not filename.startswith("<") and not path.startswith(skip_dirs)):
            return place(filename, frame.f_lineno)
        if fallback is None and filename.startswith("<") and "frozen" not in filename:
            fallback = f"{filename}:{frame.f_lineno}"
        frame = frame.f_back
    return fallback


#: The folder of the tool's engines (probes/, installed as audit/probes/): frames of our own wrappers.
_OURS = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def call_name(frame: FrameType) -> str:
    """``package.module.Class`` (a constructor) or ``package.module.function`` of a frame."""
    code = frame.f_code
    name = getattr(code, "co_qualname", code.co_name)
    for tail in (".__init__", ".__new__", ".__call__"):
        if name.endswith(tail):
            name = name[: -len(tail)]
    module = frame.f_globals.get("__name__")
    return f"{module}.{name}" if module else name


def origin(depth: int = 2) -> tuple[Optional[str], Optional[str], Optional[dict[str, Any]]]:
    """``(where, made_by, names)`` of a generator being made: the innermost line of the user's
    code on the stack, the library call that line made (None: the user's code called the
    generator's maker itself) and that code's globals. ``(None, None, None)``: no user code
    (a library making a generator while it is imported)."""
    frame: Optional[FrameType] = sys._getframe(depth)
    called: Optional[FrameType] = None
    fallback: Optional[tuple[str, Optional[FrameType], dict[str, Any]]] = None
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename.startswith("<frozen importlib"):
            return None, None, None
        if is_user_file(filename):  # a notebook cell's code included (``<ipython-input-...>``)
            where = place(filename, frame.f_lineno)
            return where, call_name(called) if called is not None else None, frame.f_globals
        if filename.startswith("<"):
            if fallback is None and "frozen" not in filename:
                fallback = (f"{filename}:{frame.f_lineno}", called, frame.f_globals)
        elif not filename.startswith(_OURS):
            called = frame
        frame = frame.f_back
    if fallback is None:
        return None, None, None
    where, called, names = fallback
    return where, call_name(called) if called is not None else None, names


def _record(kind: str, detail: str = "") -> tuple[Optional[str], int]:
    """Note one escape at the caller's place; returns (where, how many times seen there)."""
    where, made_by, names = origin(3)
    if where is None:  # made while a library is imported
        return None, 0
    key = (kind, where)
    count = _state["count"].get(key, 0) + 1
    _state["count"][key] = count
    if key not in _state["seen"]:
        _state["seen"][key] = Escape(kind, where, detail, made_by, names)
        if _state["log"]:
            escape_log.append(_state["log"], [{"kind": kind, "where": where, "detail": detail,
                                               "made_by": made_by, "pid": os.getpid()}])
    return where, count


def _pinned_seed(place: tuple[Optional[str], int]) -> int:
    """The seed the ``unseeded_rng`` knob substitutes: the same for the same place and call."""
    where, count = place
    return zlib.crc32(f"{where}|{count}".encode()) & 0x7FFFFFFF


def _is_clock(value: Any) -> bool:
    """A seed that is the current wall-clock time (seconds, milliseconds or nanoseconds)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    now = time.time()
    for scale in (1.0, 1e3, 1e6, 1e9):
        if abs(value / scale - now) < 7 * 24 * 3600:
            return True
    return False


def _unseeded(kind: str, seed_arg_missing: bool,
              seed: Any) -> tuple[Optional[int], Optional[tuple[str, str]]]:
    """Record an escape if this call draws entropy. Returns ``(pinned, key)``: the seed to use
    instead under the knob (else None) and the escape's ``(kind, where)`` (None: no escape)."""
    if seed_arg_missing or seed is None:
        name = kind + "()"
        place = _record(name, "seeded from the operating system")
    elif _is_clock(seed):
        name = kind + "(time)"
        place = _record(name, "seeded from the clock")
    else:
        return None, None
    if place[0] is None:
        return None, None
    return (_pinned_seed(place) if _state["pin"] else None), (name, place[0])


def _seeding(kind: str, seed_arg_missing: bool,
             seed: Any) -> tuple[Optional[int], Optional[tuple[str, str]]]:
    """Every seeding call: logged with its value (:mod:`probes.run.seed_log`), checked for entropy
    (:func:`_unseeded`). Returns ``(pinned, key)``: the seed to use instead under a knob (else
    None) and the escape it is (else None). Called by the wrappers, directly from the user's call."""
    value = None if seed_arg_missing else seed
    site = seed_log.record(kind, value, depth=2)
    pinned, key = _unseeded(kind, seed_arg_missing, value)
    if pinned is None and site is not None and site in _state["pin_sites"]:
        count = _state["site_count"].get(site, 0) + 1
        _state["site_count"][site] = count
        pinned = _pinned_seed((site, count))
    return pinned, key


def pin_sites(sites: Iterable[str]) -> None:
    """The ``pin_seeds`` knob: seeding calls at these places (``file:line``) get a seed derived
    from the place and the call's count there instead of the value they compute."""
    _state["pin_sites"] = frozenset(sites)


_MISSING = object()
_originals: dict[tuple[Any, str], Any] = {}


@dataclass
class Global:
    """A global generator that a seeding function reseeds: what stands for it, its state."""

    token: Callable[[], object]
    state: Callable[[], object]


def _building(original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Make a generator: a SeedSequence asked for entropy meanwhile is not drawn from."""
    _state["building"] += 1
    try:
        return original(*args, **kwargs)
    finally:
        _state["building"] -= 1


def _bit_state(gen: Any) -> Callable[[], object]:
    bits = getattr(gen, "bit_generator", gen)
    return lambda: bits.state


def _made(key: Optional[tuple[str, str]], seed: Any, made: Any,
          state: Optional[Callable[[], object]]) -> None:
    """Watch a generator just made: its own escape, or the watched seed sequence it came from."""
    if key is not None:
        rng_use.watch(key, made, state)
    elif seed is not None and rng_use.key_of(seed) is not None:
        rng_use.derived(made, seed, state)


def _wrap_function(owner: Any, name: str, kind: str, seed_index: int = 0, seed_kw: str = "seed",
                   reseeds: Optional[Global] = None, makes: bool = False) -> None:
    """``reseeds``: the global generator the function seeds; ``makes``: it returns a new
    NumPy generator (``default_rng``)."""
    original = getattr(owner, name)
    _originals[(owner, name)] = original

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if len(args) > seed_index:
            seed, missing = args[seed_index], False
        else:
            seed = kwargs.get(seed_kw, _MISSING)
            missing = seed is _MISSING
        pinned, key = _seeding(kind, missing, None if missing else seed)
        if pinned is not None:
            if len(args) > seed_index:
                args = (*args[:seed_index], pinned, *args[seed_index + 1:])
            else:
                kwargs[seed_kw] = pinned
        if reseeds is not None and key is None and not missing and seed is not None:
            rng_use.reseeding(reseeds.token())
        result = _building(original, *args, **kwargs)
        if makes:
            _made(key, None if missing else seed, result, _bit_state(result))
        elif reseeds is not None and key is not None:
            rng_use.watch(key, reseeds.token(), reseeds.state)
        return result

    wrapper.__wrapped__ = original  # type: ignore[attr-defined]  # as functools.wraps sets it
    wrapper.__name__ = getattr(original, "__name__", name)
    wrapper.__doc__ = getattr(original, "__doc__", None)
    setattr(owner, name, wrapper)


def _copied(original: Any) -> dict[str, Callable[..., Any]]:
    """A bit generator's ``__setstate__`` (``copy.deepcopy``, pickling): a copy of a watched
    generator is watched too."""
    def __setstate__(self, state):
        original.__setstate__(self, state)
        rng_use.copied(self, _bit_state(self))

    return {"__setstate__": __setstate__}


def _reseeded(original: Any) -> dict[str, Callable[..., Any]]:
    """``RandomState.seed``: a value given reaches this generator before what comes next."""
    def seed(self, *args, **kwargs):
        if args and args[0] is not None or kwargs.get("seed") is not None:
            rng_use.reseeding(self)
        return original.seed(self, *args, **kwargs)

    return {"seed": seed}


def _asked_for_entropy(original: Any) -> dict[str, Callable[..., Any]]:
    """A SeedSequence's ``generate_state`` / ``spawn`` outside the making of a generator: its
    entropy goes where the audit cannot follow, so it counts as drawn from."""
    def hook(name: str) -> Callable[..., Any]:
        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            if not _state["building"]:
                rng_use.drew(self)
            return getattr(original, name)(self, *args, **kwargs)

        method.__name__ = name
        return method

    return {"generate_state": hook("generate_state"), "spawn": hook("spawn")}


#: Per wrapped NumPy class: how to read an instance's state (None: a hook reports its use)
#: and the methods the wrapper adds (a bit generator: its ``__setstate__``).
_CLASS_STATE = {"SeedSequence": None, "RandomState": lambda self: lambda: self.get_state(legacy=False)}
_CLASS_METHODS = {"SeedSequence": _asked_for_entropy, "RandomState": _reseeded}


def _by_pickle() -> bool:
    """Called by NumPy's unpickling helpers (``copy.deepcopy`` too): the state follows."""
    frame = sys._getframe(2)
    return frame is not None and frame.f_globals.get("__name__") == "numpy.random._pickle"


def _wrap_class(owner: Any, name: str, kind: str, seed_kw: str = "seed") -> None:
    """Replace a seedable class by a subclass that sees unseeded construction. Instances of
    the original class still pass ``isinstance`` checks against the replacement."""
    original = getattr(owner, name)
    _originals[(owner, name)] = original
    state_of = _CLASS_STATE.get(name, _bit_state)

    class Meta(type(original)):  # type: ignore[misc]  # the metaclass of the class wrapped
        def __instancecheck__(cls, obj):
            return isinstance(obj, original)

        def __subclasscheck__(cls, sub):
            return issubclass(sub, original)

    def __init__(self, seed=_MISSING, *args, **kwargs):
        if seed is _MISSING and seed_kw in kwargs:
            seed = kwargs.pop(seed_kw)
        if seed is _MISSING and _by_pickle():
            original.__init__(self, *args, **kwargs)
            return
        pinned, key = _seeding(kind, seed is _MISSING, None if seed is _MISSING else seed)
        if pinned is not None:
            seed = pinned
        _building(original.__init__, self, None if seed is _MISSING else seed, *args, **kwargs)
        _made(key, None if seed is _MISSING else seed, self,
              state_of(self) if state_of is not None else None)

    body = {"__init__": __init__, "__module__": original.__module__, "__doc__": original.__doc__}
    body.update(_CLASS_METHODS.get(name, _copied)(original))
    replacement = Meta(name, (original,), body)
    setattr(owner, name, replacement)


def _make_random_class(base: Any) -> Any:
    class Random(base):  # random.Random() without a seed draws from the OS
        def __init__(self, x=_MISSING):
            pinned, key = _seeding("random.Random", x is _MISSING, None if x is _MISSING else x)
            super().__init__(pinned if pinned is not None else (None if x is _MISSING else x))
            if key is not None:
                rng_use.watch(key, self, self.getstate)

        def seed(self, a=None, version=2):
            if a is not None:
                rng_use.reseeding(self)
            super().seed(a, version)

    Random.__name__ = Random.__qualname__ = "Random"
    Random.__module__ = "random"
    return Random


def _make_system_random(base: Any) -> Any:
    class SystemRandom(base):  # cannot be seeded at all; under the knob it becomes seeded
        def __init__(self, x=None):
            place = _record("random.SystemRandom()", "fed by os.urandom and cannot be seeded")
            pin = _state["pin"] and place[0] is not None
            self._pinned = _originals[(random, "Random")](_pinned_seed(place)) if pin else None
            super().__init__(x)
            if place[0] is not None:
                rng_use.watch(("random.SystemRandom()", place[0]), self, None)

        def random(self):
            rng_use.drew(self)
            return self._pinned.random() if self._pinned else super().random()

        def getrandbits(self, k):
            rng_use.drew(self)
            return self._pinned.getrandbits(k) if self._pinned else super().getrandbits(k)

        def randbytes(self, n):
            rng_use.drew(self)
            return self._pinned.randbytes(n) if self._pinned else super().randbytes(n)

    SystemRandom.__name__ = SystemRandom.__qualname__ = "SystemRandom"
    SystemRandom.__module__ = "random"
    return SystemRandom


def _make_generator_class(base: Any) -> Any:
    class Generator(base):  # torch.Generator().seed() draws from the OS
        def seed(self):
            pinned, key = _unseeded("torch.Generator.seed", True, None)
            if pinned is not None:
                self.manual_seed(pinned)
                return pinned
            value = super().seed()
            if key is not None:
                rng_use.watch(key, self, self.get_state)
            return value

        def manual_seed(self, seed):
            pinned, key = _seeding("torch.Generator.manual_seed", False, seed)
            if key is None:
                rng_use.reseeding(self)
            out = super().manual_seed(pinned if pinned is not None else seed)
            if key is not None:
                rng_use.watch(key, self, self.get_state)
            return out

    Generator.__name__ = Generator.__qualname__ = "Generator"
    Generator.__module__ = "torch"
    return Generator


def install(log_path: Optional[str] = None, pin: bool = False,
            seeds_path: Optional[str] = None) -> None:
    """Start recording escapes (idempotent). ``pin`` substitutes place-derived seeds;
    ``seeds_path`` logs every seeding call with its value (:mod:`probes.run.seed_log`)."""
    _state["log"] = log_path
    _state["pin"] = pin
    _state["pid"] = os.getpid()
    if seeds_path is not None:
        seed_log.start(seeds_path)
    if _state["installed"]:
        return
    numpy_global = Global(lambda: np.random.mtrand._rand,
                          lambda: np.random.mtrand._rand.get_state(legacy=False))
    _wrap_function(np.random, "default_rng", "numpy.random.default_rng", makes=True)
    _wrap_function(np.random, "seed", "numpy.random.seed", reseeds=numpy_global)
    for name in ("RandomState", "PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64"):
        if hasattr(np.random, name):
            _wrap_class(np.random, name, f"numpy.random.{name}")
    _wrap_class(np.random, "SeedSequence", "numpy.random.SeedSequence", seed_kw="entropy")
    _wrap_function(random, "seed", "random.seed", seed_kw="a",
                   reseeds=Global(lambda: random._inst, random.getstate))
    _originals[(random, "Random")] = random.Random
    random.Random = _make_random_class(random.Random)  # type: ignore[misc]  # a subclass
    _originals[(random, "SystemRandom")] = random.SystemRandom
    random.SystemRandom = _make_system_random(random.SystemRandom)  # type: ignore[misc]  # a subclass
    _install_torch()
    _state["installed"] = True


def _install_torch() -> None:
    torch_global = Global(lambda: torch.default_generator, torch.get_rng_state)
    _wrap_function(torch, "manual_seed", "torch.manual_seed", reseeds=torch_global)
    _wrap_function(torch.cuda, "manual_seed", "torch.cuda.manual_seed")
    _wrap_function(torch.cuda, "manual_seed_all", "torch.cuda.manual_seed_all")
    _originals[(torch, "seed")] = torch.seed

    def torch_seed():
        pinned, key = _unseeded("torch.seed", True, None)
        if pinned is not None:
            _originals[(torch, "manual_seed")](pinned)
            return pinned
        value = _originals[(torch, "seed")]()
        if key is not None:
            rng_use.watch(key, torch.default_generator, torch.get_rng_state)
        return value

    torch.seed = torch_seed
    _originals[(torch, "Generator")] = torch.Generator
    torch.Generator = _make_generator_class(torch.Generator)  # type: ignore[misc]  # a subclass


def uninstall() -> None:
    """Put every wrapped name back (tests; a worker process simply exits)."""
    for (owner, name), original in _originals.items():
        setattr(owner, name, original)
    _originals.clear()
    _state.update(installed=False, seen={}, count={}, log=None, pin=False,
                  pin_sites=frozenset(), site_count={}, building=0, pid=None)
    rng_use.reset()
    seed_log.start(None)


def uses() -> list[dict[str, Any]]:
    """What became of each escape's generators in this process: ``{kind, where, use}`` and,
    for one a library made that was drawn from, ``holder``: the path from the user's globals
    to the object holding it that has a ``seed`` method (None: not found)."""
    found = rng_use.outcomes()
    out = []
    for key, esc in _state["seen"].items():
        use = found.get(key)
        if use is None:  # nothing could be watched there: counted as drawn by the reader
            continue
        item = {"kind": key[0], "where": key[1], "use": use}
        if use == rng_use.DRAWN and esc.made_by and esc.names is not None:
            item["holder"] = rng_use.holder(rng_use.holders(key), esc.names)
        out.append(item)
    return out


def finish() -> None:
    """At the end of the compared steps, in the process that installed the tracing: one
    ``use`` line per escape in the log (an escape without one counts as drawn from)."""
    log = _state["log"]
    if not log or os.getpid() != _state["pid"]:
        return
    try:
        found = uses()
    except Exception:  # a user object that cannot be read: no say, so every escape counts as drawn
        return
    escape_log.append(log, [{**item, "pid": os.getpid()} for item in found])


def escapes() -> list[dict[str, Any]]:
    """What this process saw, first occurrence order, with counts."""
    return [
        {"kind": e.kind, "where": e.where, "detail": e.detail, "made_by": e.made_by,
         "count": _state["count"][key]}
        for key, e in _state["seen"].items()
    ]


def seeding_helpers() -> Callable[..., Any]:
    """The unwrapped ``torch.manual_seed`` (the tool's own seeding must not count as an escape)."""
    return _originals.get((torch, "manual_seed"), torch.manual_seed)
