"""What became of each generator made without a seed: drawn from, reseeded first, or unused.

:mod:`probes.run.rng_escape` sees a generator made without a seed (or a global one reseeded from
the OS or the clock) when it is made, and hands it to :func:`watch`. At the end of the run
:func:`outcomes` says, per escape (kind and place), what became of the generators made there:

* ``drawn``: a generator's state moved before any seeding call reached it (numbers were drawn);
* ``reseeded``: a seeding call with a value reached it before its first draw;
* ``unused``: neither; its numbers never reached anything.

Nothing is added to a draw (a training step is a hot path): a generator's state is read when it
is made, when a seeding call reaches it and once at the end, and compared. What cannot be seen
counts as ``drawn``: a generator alive when the process forks (the child may draw from it), and
more than :data:`LIMIT` generators made at one place (only the first are held). Light: no torch,
no NumPy of its own.
"""
from __future__ import annotations

import os
import types
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Optional

#: Generators held per place; more made there count as drawn.
LIMIT = 32
DRAWN, RESEEDED, UNUSED = "drawn", "reseeded", "unused"


@dataclass
class Watched:
    """One generator made without a seed, held until the end of the run."""

    key: tuple[Any, ...]  # (kind, where) of its escape
    token: Any  # the generator (or what stands for a global one)
    state: Optional[Callable[[], Any]]  # reads its state; None: a draw is reported by a hook
    initial: Any = None
    outcome: Optional[str] = None  # settled: drawn or reseeded

    def settle(self) -> str:
        if self.outcome is None and self.state is not None and not same(self.state(), self.initial):
            return DRAWN
        return self.outcome or UNUSED


#: Children looked at per object when searching for a generator's holder.
_WIDTH = 64
#: Values whose insides are never searched for a generator's holder.
_LEAVES = (str, bytes, int, float, bool, type(None), types.ModuleType, types.FunctionType)

_live: dict[int, Watched] = {}  # id(token) -> Watched, not settled
_held: dict[tuple[str, str], list[Watched]] = {}  # (kind, where) -> [Watched]
_forced: set[Any] = set()  # keys counted as drawn whatever their generators show


def same(a: Any, b: Any) -> bool:
    """Two generator states equal (nested dicts, tuples, NumPy arrays, torch tensors)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if hasattr(a, "shape") and hasattr(b, "shape"):
        return tuple(a.shape) == tuple(b.shape) and bool((a == b).all())
    return bool(a == b)


def watch(key: tuple[str, str], token: Any, state: Optional[Callable[[], Any]]) -> None:
    """Hold ``token``, made (or reseeded from the OS) at ``key``'s place, until the end."""
    held = _held.setdefault(key, [])
    if len(held) >= LIMIT:
        _forced.add(key)
        return
    previous = _live.pop(id(token), None)
    if previous is not None:  # a global generator reseeded from the OS again
        previous.outcome = previous.settle()
    item = Watched(key, token, state, state() if state is not None else None)
    held.append(item)
    _live[id(token)] = item


def key_of(token: Any) -> Optional[tuple[Any, ...]]:
    """The escape ``token`` was made at, while it is watched (None: not watched)."""
    item = _live.get(id(token))
    return item.key if item is not None else None


def derived(token: Any, source: Any, state: Optional[Callable[[], Any]]) -> None:
    """``token`` takes its numbers from the watched ``source`` (a bit generator built from an
    unseeded SeedSequence): it is watched as part of the source's escape."""
    key = key_of(source)
    if key is not None:
        watch(key, token, state)


def copied(token: Any, state: Callable[[], Any]) -> None:
    """``token`` was given the state of another generator (``copy.deepcopy``, pickling): if a
    watched generator is in that state now, the copy is watched as part of its escape."""
    now = state()
    source = next((w for w in list(_live.values()) if w.state is not None and same(w.state(), now)),
                  None)
    if source is not None:
        watch(source.key, token, state)


def drew(token: Any) -> None:
    """A draw seen by a hook (SystemRandom, a SeedSequence asked for its entropy)."""
    item = _live.pop(id(token), None)
    if item is not None:
        item.outcome = DRAWN


def reseeding(token: Any) -> None:
    """A seeding call with a value is about to reach ``token``: settle what came before it."""
    item = _live.pop(id(token), None)
    if item is not None:
        item.outcome = DRAWN if item.settle() == DRAWN else RESEEDED


def _before_fork() -> None:
    for item in _live.values():
        _forced.add(item.key)


os.register_at_fork(before=_before_fork)


def combined(uses: list[Any]) -> str:
    """One outcome for several generators (or processes): drawn if any was, else reseeded if
    any was, else unused."""
    return DRAWN if DRAWN in uses else RESEEDED if RESEEDED in uses else UNUSED


def outcomes() -> dict[tuple[str, str], str]:
    """``{(kind, where): "drawn" | "reseeded" | "unused"}`` for every place that made a
    watched generator (a place not listed: nothing was watched there; count it as drawn)."""
    out = {}
    for key, held in _held.items():
        out[key] = DRAWN if key in _forced else combined([w.settle() for w in held])
    return out


def holders(key: tuple[str, str]) -> list[Any]:
    """The generators watched for ``key`` that were drawn from (all of them when none was
    seen drawn), to find which of the user's objects holds one."""
    held = _held.get(key, [])
    drawn = [w.token for w in held if w.settle() == DRAWN]
    return drawn or [w.token for w in held]


def _children(obj: Any) -> list[Any]:
    """``(text to append to the path, child)`` pairs: attributes, items of lists and dicts."""
    if isinstance(obj, (list, tuple)):
        return [(f"[{i}]", v) for i, v in enumerate(obj[:_WIDTH])]
    if isinstance(obj, dict):
        return [(f"[{k!r}]", v) for k, v in list(obj.items())[:_WIDTH] if isinstance(k, (str, int))]
    attrs = getattr(obj, "__dict__", None)
    if not isinstance(attrs, dict) or isinstance(obj, (type, *_LEAVES)):
        return []
    return [(f".{k}", v) for k, v in list(attrs.items())[:_WIDTH] if isinstance(k, str)]


def _holds(obj: Any, tokens: list[Any]) -> bool:
    """``obj`` has a ``seed`` method and holds one of ``tokens`` directly (or a NumPy
    Generator drawing from one). User objects' attributes may be properties that raise."""
    try:
        if not callable(getattr(obj, "seed", None)):
            return False
        values = [v for _, v in _children(obj)]
        return any(v is t or getattr(v, "bit_generator", None) is t for v in values for t in tokens)
    except Exception:
        return False


def holder(tokens: list[Any], roots: dict[str, Any], budget: int = 5000) -> Optional[str]:
    """The path, from the names in ``roots`` (a script's globals), to the nearest object that
    holds one of ``tokens`` and has a ``seed`` method (``envs.single_action_space``); None
    when there is none within ``budget`` objects."""
    seen: set[Any] = set()
    queue = deque((name, value) for name, value in list(roots.items())
                  if not name.startswith("_") and not isinstance(value, (type, *_LEAVES)))
    while queue and budget > 0:
        path, obj = queue.popleft()
        if id(obj) in seen or isinstance(obj, _LEAVES):
            continue
        seen.add(id(obj))
        budget -= 1
        if _holds(obj, tokens):
            return path
        try:
            queue.extend((path + step, child) for step, child in _children(obj))
        except Exception:  # an object whose __dict__ or items cannot be read
            continue
    return None


def reset() -> None:
    """Forget everything (tests; a run's process simply exits)."""
    _live.clear()
    _held.clear()
    _forced.clear()
