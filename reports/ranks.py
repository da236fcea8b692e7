"""Distributed runs in the reports: ranks side by side (each rank's run-to-run timeline, the
rank x step replica grid) and the sentences the terminal, HTML and summaries share."""
from __future__ import annotations

from typing import Any, Optional

from audit.probes.results import STAGES, DeterminismResult

#: Grid columns shown at most (the first steps; the JSON keeps them all).
MAX_COLUMNS = 120

REPLICA_STATE_TITLES = {
    "agree": "identical to rank 0",
    "params": "parameters differ from rank 0's",
    "buffers": "buffers differ from rank 0's at the start of the forward",
    "both": "parameters and buffers differ from rank 0's",
    "missing": "not measured",
}


def _label(step: Optional[int]) -> str:
    return "init" if step is None else str(step)


def replica_grid(result: DeterminismResult) -> dict[str, Any]:
    """``{"steps": [labels], "rows": [{"rank", "cells": [state]}], "first": (rank, col)}``."""
    replicas = result.replicas
    if replicas is None or not replicas.grid:
        return {}
    grid = replicas.grid[:MAX_COLUMNS]
    ranks = max(len(row.ranks) for row in grid)
    rows = [{"rank": rank, "cells": [row.ranks[rank] if rank < len(row.ranks) else "missing"
                                     for row in grid]} for rank in range(ranks)]
    first = None
    if replicas.first is not None:
        col = next((i for i, row in enumerate(grid) if row.step == replicas.first.step), None)
        first = None if col is None else (replicas.first.rank, col)
    return {"steps": [_label(row.step) for row in grid], "rows": rows, "first": first,
            "run": replicas.run, "cut": len(replicas.grid) > MAX_COLUMNS,
            "titles": REPLICA_STATE_TITLES}


def _first_stage(stages: dict[str, Any]) -> str:
    states = [stages.get(s) for s in STAGES if s in stages]
    if "missing" in states:
        return "missing"
    return next((s for s in STAGES if stages.get(s) == "differ"), "agree")


def rank_timelines(result: DeterminismResult) -> dict[str, Any]:
    """Each rank's run-to-run comparison per step: ``agree``, the first stage that differs,
    or ``missing``; same shape as :func:`replica_grid`."""
    if not result.rank_timelines:
        return {}
    first_rows = result.rank_timelines[0].rows[:MAX_COLUMNS]
    rows = [{"rank": t.rank, "cells": [_first_stage(row.stages) for row in t.rows[:MAX_COLUMNS]]}
            for t in result.rank_timelines]
    div = result.first_divergence
    first = None
    if div is not None and div.rank is not None:
        col = next((i for i, row in enumerate(first_rows) if row.step == div.step), None)
        first = None if col is None else (div.rank, col)
    return {"steps": [_label(row.step) for row in first_rows], "rows": rows, "first": first,
            "titles": TIMELINE_STATE_TITLES}


def distributed_problem(result: DeterminismResult) -> str:
    """What fails in a distributed run whose runs agree ("" when nothing does)."""
    problems = []
    if result.replicas is not None and result.replicas.verdict == "diverged":
        problems.append("the replicas part")
    if any(c.source == "sampler_epoch" for c in result.causes):
        problems.append("a sampler replays its order every epoch")
    return " and ".join(problems)


TIMELINE_STATE_TITLES = {"agree": "the runs agree on this rank", "missing": "not measured"}


def replica_sentence(result: DeterminismResult) -> str:
    """One sentence on replica consistency within the runs."""
    replicas = result.replicas
    if replicas is None:
        return "Replica consistency was not measured: no run finished with every rank traced."
    if replicas.first is None:
        return (f"The replicas agree: parameters are identical on all {result.nproc} ranks after "
                "every step, and buffers wherever DDP synchronizes them.")
    first = replicas.first
    at = "before the first step" if first.step is None else f"at step {first.step}"
    return (f"The replicas part {at}: {replicas.kind or 'tensor'} {first.tensor} on rank "
            f"{first.rank} differs from rank 0's (run {replicas.run}).")


def rank_lines(result: DeterminismResult) -> list[Any]:
    """Short lines for the terminal: per rank where the runs part, then replicas and notes."""
    lines = []
    for t in result.rank_timelines:
        differ = [(row.step, _first_stage(row.stages)) for row in t.rows
                  if _first_stage(row.stages) not in ("agree", "missing")]
        if differ:
            step, stage = differ[0]
            when = "before the first step" if step is None else f"at step {step}"
            lines.append(f"rank {t.rank}: runs part {when} ({stage})")
        else:
            lines.append(f"rank {t.rank}: runs agree on every step")
    lines.append(replica_sentence(result))
    for key in ("sharding", "rank_rng"):
        note = (result.detail or {}).get(key)
        if note:
            lines.append(f"{key.replace('_', ' ')}: {note}")
    return lines
