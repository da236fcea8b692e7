"""The escape log: the JSON-lines file where every process of a run records randomness that
escapes the matched seed, written by :func:`append` and read by :func:`read_log`.

Each write opens the file to append and closes it again: a run's DataLoader worker processes
write to their parent's file (each rank of a distributed run has its own). Two kinds of line,
each with the writer's ``pid``:

* an escape: ``kind``, ``where`` (``file:line``, or None), ``detail``, and ``made_by``
  (:mod:`probes.run.rng_escape`: a generator made or seeded from the OS or the clock) or
  ``seeded_at`` (:mod:`probes.script.draws`: a global generator drawn from before it was seeded;
  the script tracer's global generator that moved but was never seeded has neither);
* a use: ``kind``, ``where``, ``use`` (``drawn``, ``reseeded``, ``unused``: what became of the
  escape's generators in that process) and, for a generator a library made that was drawn
  from, ``holder`` (:func:`probes.run.rng_escape.finish`, at the end of the compared steps).
"""
from __future__ import annotations

import json
from typing import Any, Iterable

from audit.probes.run import rng_use


def append(path: str, lines: Iterable[dict[str, Any]]) -> None:
    """Append ``lines`` to the escape log at ``path``, one JSON object a line, in their order
    (the file is created even when there is none)."""
    with open(path, "a", encoding="utf-8") as fh:
        for line in lines:
            fh.write(json.dumps(line) + "\n")


def read_log(path: str) -> list[dict[str, Any]]:
    """Escapes recorded by every process that wrote to ``path`` (main and workers), one entry
    per kind and place; ``count`` is how many processes hit it; ``use`` what became of its
    generators (``drawn`` when a process that made one did not say: it may have)."""
    seen: dict[tuple[Any, Any], dict[str, Any]] = {}
    told: dict[tuple[Any, Any, Any], dict[str, Any]] = {}  # (kind, where, pid) -> use line
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    item = json.loads(line)
                except ValueError:
                    continue
                key = (item.get("kind"), item.get("where"))
                if "use" in item:
                    told[key + (item.get("pid"),)] = item
                elif key in seen:
                    seen[key]["count"] += 1
                    seen[key]["pids"].append(item.get("pid"))
                else:
                    seen[key] = {"kind": key[0], "where": key[1], "detail": item.get("detail", ""),
                                 "made_by": item.get("made_by"), "count": 1,
                                 "pids": [item.get("pid")]}
    except FileNotFoundError:
        return []
    for key, entry in seen.items():
        said = [told.get((*key, pid)) for pid in entry.pop("pids")]
        entry["use"] = rng_use.combined([s["use"] if s else rng_use.DRAWN for s in said])
        entry["holder"] = next((s.get("holder") for s in said if s and s.get("holder")), None)
    return list(seen.values())
