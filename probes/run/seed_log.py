"""Every seeding call the user's code makes, with its place and its value.

:mod:`probes.run.rng_escape` calls :func:`record` from its wrappers of ``torch.manual_seed``,
``torch.cuda.manual_seed(_all)``, ``torch.Generator.manual_seed``, ``np.random.seed``,
``np.random.default_rng``, ``RandomState``, ``SeedSequence``, ``random.seed`` and
``random.Random``. A call counts when the code calling the seeding function directly is the
user's (a library seeding its own generators, or torch seeding DataLoader workers, is not).
Each call is one JSON line in the log, written by the main process and by DataLoader worker
processes alike (they inherit the log's path), so matched runs can be compared call site by
call site: a site that gets different values in two runs takes its seed from something the
matched seed does not fix (the clock, the process id, ...).
"""
from __future__ import annotations

import json
import operator
import os
import sys
from types import FrameType
from typing import Any, Optional

from audit.probes.run.processes import is_user_file, place, short_path  # noqa: F401 (re-exported)

_state: dict[str, Any] = {"path": None}

def start(path: Optional[str]) -> None:
    """Log seeding calls to ``path`` (None: stop logging)."""
    _state.update(path=path)


#: The folder of the tool's engines (probes/, installed as audit/probes/): frames of our own wrappers.
_OURS = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def caller(depth: int) -> Optional[str]:
    """``file:line`` of the frame ``depth`` levels up (past any more of the audit's own
    wrappers) when it is the user's code, else None."""
    frame: Optional[FrameType]
    try:
        frame = sys._getframe(depth + 1)
    except ValueError:
        return None
    while frame is not None and frame.f_code.co_filename.startswith(_OURS):
        frame = frame.f_back
    if frame is None:
        return None
    filename = frame.f_code.co_filename
    if not is_user_file(filename):
        return None
    return place(filename, frame.f_lineno)




def value_text(value: Any) -> Optional[object]:
    """A seed as JSON: integers as ints (large ones as text), None as None, others as text."""
    if value is None or isinstance(value, bool):
        return value
    try:
        number = operator.index(value)
    except TypeError:
        return repr(value)[:80]
    return number if abs(number) < 2 ** 53 else str(number)


def record(kind: str, value: Any, depth: int) -> Optional[str]:
    """Log one seeding call made by the frame ``depth`` levels above the caller; returns its
    place, or None when that frame is not the user's code."""
    where = caller(depth + 1)
    if where is None:
        return None
    path = _state["path"]
    if path:
        line = {"kind": kind, "where": where, "value": value_text(value), "pid": os.getpid(),
                "worker": _worker_id()}
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")
    return where


def _worker_id() -> Optional[int]:
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    info = torch.utils.data.get_worker_info()
    return None if info is None else info.id


def read(path: str) -> list[Any]:
    """The seeding calls one run logged (main process and workers), in the order written."""
    calls = []
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    calls.append(json.loads(line))
                except ValueError:
                    continue
    except FileNotFoundError:
        return []
    return calls
