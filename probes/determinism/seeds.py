"""Seeding calls compared across matched runs: the call sites whose value changed.

Each run logs its seeding calls (:mod:`probes.run.seed_log`). A call site that got other values in
another run computes its seed from something the matched seed does not fix: the clock, the
process id, a counter on disk. Seeds that legitimately differ per DataLoader worker (derived
from ``torch.initial_seed()`` or the worker id) are the same in every run, so they never show
here. Calls that took no seed at all are the escapes' business (:mod:`probes.run.rng_escape`).
"""
from __future__ import annotations

from typing import Any
from collections import defaultdict

from audit.probes.results import SeedCall

#: Values kept per run and site in the report.
SHOWN = 4


def _by_site(calls: list[Any]) -> dict[tuple[str, str], Any]:
    """(kind, where) -> (sorted values as text, the values in order, made in a worker?)."""
    sites: dict[tuple[str, str], Any] = defaultdict(lambda: ([], False))
    for call in calls:
        key = (call.get("kind"), call.get("where"))
        values, worker = sites[key]
        values.append(call.get("value"))
        sites[key] = (values, worker or call.get("worker") is not None)
    return dict(sites)


def varying(runs: list[Any], escape_places: set[Any]) -> list[Any]:
    """:class:`SeedCall` for each site whose values differ between run 0 and another run;
    ``runs`` holds each run's logged calls; sites that are already escapes are left out."""
    per_run = [_by_site(calls) for calls in runs]
    if len(per_run) < 2:
        return []
    keys = list(dict.fromkeys(k for sites in per_run for k in sites))
    out = []
    for kind, where in keys:
        if where in escape_places:
            continue
        seen = [sites.get((kind, where), ([], False)) for sites in per_run]
        texts = [sorted(map(repr, values)) for values, _ in seen]
        if all(t == texts[0] for t in texts[1:]):
            continue
        if any(v is None for values, _ in seen for v in values):
            continue  # seeded from the OS: an escape
        out.append(SeedCall(kind=kind, where=where,
                            values=[values[:SHOWN] for values, _ in seen],
                            in_workers=any(worker for _, worker in seen)))
    return out
