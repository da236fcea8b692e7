"""Seeing randomness that escapes the matched seed, with the file and line that made it.

:func:`install` wraps the constructors and reseeding calls that draw entropy from the OS or
the clock: NumPy ``default_rng()`` / ``RandomState()`` / ``seed()`` without a seed,
``random.Random()`` and ``random.seed()`` without one, ``random.SystemRandom``,
``torch.seed()``, ``torch.Generator().seed()``, and any of these (plus ``torch.manual_seed``)
given a seed that is the current time. Each call is recorded once per place as an
:class:`Escape`, appended to a JSON-lines log so that DataLoader worker processes report too.

With ``pin=True`` (the ``unseeded_rng`` knob of the attribution reruns) each such call gets a
seed derived from its place and occurrence instead, the same in every run: if that removes the
divergence, the escape is proven to be the cause.
"""
from __future__ import annotations

import json
import os
import random
import sys
import time
import zlib
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from audit.probes import seed_log
from audit.probes.runs import library_dirs
from audit.probes.seed_log import short_path  # noqa: F401  (the place format, re-exported)

_state: dict = {"log": None, "pin": False, "seen": {}, "count": {}, "installed": False,
                "pin_sites": frozenset(), "site_count": {}}


@dataclass
class Escape:
    kind: str
    where: Optional[str]
    detail: str = ""


def user_frame(skip_dirs: tuple) -> Optional[str]:
    """``file:line`` of the innermost frame that is the user's code, not ours or a library's."""
    frame = sys._getframe(2)
    fallback = None
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename.startswith("<frozen importlib"):
            return None  # a library making a generator while it is imported: not the user's
        path = os.path.abspath(filename) if not filename.startswith("<") else filename
        if not filename.startswith("<") and not path.startswith(skip_dirs):
            return f"{short_path(path)}:{frame.f_lineno}"
        if fallback is None and filename.startswith("<") and "frozen" not in filename:
            fallback = f"{filename}:{frame.f_lineno}"
        frame = frame.f_back
    return fallback


def _record(kind: str, detail: str = "") -> tuple:
    """Note one escape at the caller's place; returns (where, how many times seen there)."""
    where = user_frame(library_dirs())
    if where is None:  # made inside the standard library or torch itself (e.g. tempfile names)
        return None, 0
    key = (kind, where)
    count = _state["count"].get(key, 0) + 1
    _state["count"][key] = count
    if key not in _state["seen"]:
        _state["seen"][key] = Escape(kind, where, detail)
        log = _state["log"]
        if log:
            line = json.dumps({"kind": kind, "where": where, "detail": detail, "pid": os.getpid()})
            with open(log, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")
    return where, count


def _pinned_seed(place: tuple) -> int:
    """The seed the ``unseeded_rng`` knob substitutes: the same for the same place and call."""
    where, count = place
    return zlib.crc32(f"{where}|{count}".encode()) & 0x7FFFFFFF


def _is_clock(value) -> bool:
    """A seed that is the current wall-clock time (seconds, milliseconds or nanoseconds)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    now = time.time()
    for scale in (1.0, 1e3, 1e6, 1e9):
        if abs(value / scale - now) < 7 * 24 * 3600:
            return True
    return False


def _unseeded(kind: str, seed_arg_missing: bool, seed) -> Optional[int]:
    """Record an escape if this call draws entropy; return a pinned seed under the knob."""
    if seed_arg_missing or seed is None:
        place = _record(kind + "()", "seeded from the operating system")
    elif _is_clock(seed):
        place = _record(kind + "(time)", "seeded from the clock")
    else:
        return None
    return _pinned_seed(place) if _state["pin"] and place[0] is not None else None


def _seeding(kind: str, seed_arg_missing: bool, seed) -> Optional[int]:
    """Every seeding call: logged with its value (:mod:`probes.seed_log`), checked for entropy
    (:func:`_unseeded`); returns the seed to use instead under a knob, else None. Called by the
    wrappers, directly from the user's call."""
    value = None if seed_arg_missing else seed
    site = seed_log.record(kind, value, depth=2)
    pinned = _unseeded(kind, seed_arg_missing, value)
    if pinned is None and site is not None and site in _state["pin_sites"]:
        count = _state["site_count"].get(site, 0) + 1
        _state["site_count"][site] = count
        pinned = _pinned_seed((site, count))
    return pinned


def pin_sites(sites) -> None:
    """The ``pin_seeds`` knob: seeding calls at these places (``file:line``) get a seed derived
    from the place and the call's count there instead of the value they compute."""
    _state["pin_sites"] = frozenset(sites)


_MISSING = object()
_originals: dict = {}


def _wrap_function(owner, name: str, kind: str, seed_index: int = 0, seed_kw: str = "seed"):
    original = getattr(owner, name)
    _originals[(owner, name)] = original

    def wrapper(*args, **kwargs):
        if len(args) > seed_index:
            seed, missing = args[seed_index], False
        else:
            seed = kwargs.get(seed_kw, _MISSING)
            missing = seed is _MISSING
        pinned = _seeding(kind, missing, None if missing else seed)
        if pinned is not None:
            args = list(args)
            if len(args) > seed_index:
                args[seed_index] = pinned
            else:
                kwargs[seed_kw] = pinned
        return original(*args, **kwargs)

    wrapper.__wrapped__ = original
    wrapper.__name__ = getattr(original, "__name__", name)
    wrapper.__doc__ = getattr(original, "__doc__", None)
    setattr(owner, name, wrapper)


def _wrap_class(owner, name: str, kind: str, seed_kw: str = "seed") -> None:
    """Replace a seedable class by a subclass that sees unseeded construction. Instances of
    the original class still pass ``isinstance`` checks against the replacement."""
    original = getattr(owner, name)
    _originals[(owner, name)] = original

    class Meta(type(original)):
        def __instancecheck__(cls, obj):
            return isinstance(obj, original)

        def __subclasscheck__(cls, sub):
            return issubclass(sub, original)

    def __init__(self, seed=_MISSING, *args, **kwargs):
        if seed is _MISSING and seed_kw in kwargs:
            seed = kwargs.pop(seed_kw)
        pinned = _seeding(kind, seed is _MISSING, None if seed is _MISSING else seed)
        if pinned is not None:
            seed = pinned
        original.__init__(self, None if seed is _MISSING else seed, *args, **kwargs)

    replacement = Meta(name, (original,), {"__init__": __init__, "__module__": original.__module__,
                                          "__doc__": original.__doc__})
    setattr(owner, name, replacement)


def _make_random_class(base):
    class Random(base):  # random.Random() without a seed draws from the OS
        def __init__(self, x=_MISSING):
            pinned = _seeding("random.Random", x is _MISSING, None if x is _MISSING else x)
            super().__init__(pinned if pinned is not None else (None if x is _MISSING else x))

    Random.__name__ = Random.__qualname__ = "Random"
    Random.__module__ = "random"
    return Random


def _make_system_random(base):
    class SystemRandom(base):  # cannot be seeded at all; under the knob it becomes seeded
        def __init__(self, x=None):
            place = _record("random.SystemRandom()", "fed by os.urandom and cannot be seeded")
            pin = _state["pin"] and place[0] is not None
            self._pinned = _originals[(random, "Random")](_pinned_seed(place)) if pin else None
            super().__init__(x)

        def random(self):
            return self._pinned.random() if self._pinned else super().random()

        def getrandbits(self, k):
            return self._pinned.getrandbits(k) if self._pinned else super().getrandbits(k)

    SystemRandom.__name__ = SystemRandom.__qualname__ = "SystemRandom"
    SystemRandom.__module__ = "random"
    return SystemRandom


def _make_generator_class(base):
    class Generator(base):  # torch.Generator().seed() draws from the OS
        def seed(self):
            pinned = _unseeded("torch.Generator.seed", True, None)
            if pinned is not None:
                self.manual_seed(pinned)
                return pinned
            return super().seed()

        def manual_seed(self, seed):
            pinned = _seeding("torch.Generator.manual_seed", False, seed)
            return super().manual_seed(pinned if pinned is not None else seed)

    Generator.__name__ = Generator.__qualname__ = "Generator"
    Generator.__module__ = "torch"
    return Generator


def install(log_path: Optional[str] = None, pin: bool = False,
            seeds_path: Optional[str] = None) -> None:
    """Start recording escapes (idempotent). ``pin`` substitutes place-derived seeds;
    ``seeds_path`` logs every seeding call with its value (:mod:`probes.seed_log`)."""
    _state["log"] = log_path
    _state["pin"] = pin
    if seeds_path is not None:
        seed_log.start(seeds_path)
    if _state["installed"]:
        return
    _wrap_function(np.random, "default_rng", "numpy.random.default_rng")
    _wrap_function(np.random, "seed", "numpy.random.seed")
    for name in ("RandomState", "PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64"):
        if hasattr(np.random, name):
            _wrap_class(np.random, name, f"numpy.random.{name}")
    _wrap_class(np.random, "SeedSequence", "numpy.random.SeedSequence", seed_kw="entropy")
    _wrap_function(random, "seed", "random.seed", seed_kw="a")
    _originals[(random, "Random")] = random.Random
    random.Random = _make_random_class(random.Random)
    _originals[(random, "SystemRandom")] = random.SystemRandom
    random.SystemRandom = _make_system_random(random.SystemRandom)
    _wrap_function(torch, "manual_seed", "torch.manual_seed")
    _wrap_function(torch.cuda, "manual_seed", "torch.cuda.manual_seed")
    _wrap_function(torch.cuda, "manual_seed_all", "torch.cuda.manual_seed_all")
    _originals[(torch, "seed")] = torch.seed

    def torch_seed():
        pinned = _unseeded("torch.seed", True, None)
        if pinned is not None:
            _originals[(torch, "manual_seed")](pinned)
            return pinned
        return _originals[(torch, "seed")]()

    torch.seed = torch_seed
    _originals[(torch, "Generator")] = torch.Generator
    torch.Generator = _make_generator_class(torch.Generator)
    _state["installed"] = True


def uninstall() -> None:
    """Put every wrapped name back (tests; a worker process simply exits)."""
    for (owner, name), original in _originals.items():
        setattr(owner, name, original)
    _originals.clear()
    _state.update(installed=False, seen={}, count={}, log=None, pin=False,
                  pin_sites=frozenset(), site_count={})
    seed_log.start(None)


def escapes() -> list:
    """What this process saw, first occurrence order, with counts."""
    return [
        {"kind": e.kind, "where": e.where, "detail": e.detail, "count": _state["count"][key]}
        for key, e in _state["seen"].items()
    ]


def read_log(path: str) -> list:
    """Escapes recorded by every process that wrote to ``path`` (main and workers), one entry
    per kind and place; ``count`` is how many processes hit it."""
    seen: dict = {}
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    item = json.loads(line)
                except ValueError:
                    continue
                key = (item.get("kind"), item.get("where"))
                if key in seen:
                    seen[key]["count"] += 1
                else:
                    seen[key] = {"kind": key[0], "where": key[1], "detail": item.get("detail", ""), "count": 1}
    except FileNotFoundError:
        return []
    return list(seen.values())


def seeding_helpers() -> Callable:
    """The unwrapped ``torch.manual_seed`` (the tool's own seeding must not count as an escape)."""
    return _originals.get((torch, "manual_seed"), torch.manual_seed)
