"""The resumed run against the uninterrupted one: the state right after the load, then each
step from K on, with the trace comparison the determinism audit uses too
(:mod:`audit.probes.run.compare`)."""
from __future__ import annotations

from typing import Any, Optional

from audit.probes.run import compare
from audit.probes.results.resume import ResumeDivergence, ResumeStep
from audit.probes.resume import state
from audit.probes.results.records import Record

#: Steps of the uninterrupted run shown before K in the timeline.
CONTEXT = 2


def record(records: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next((r for r in records if r.get("type") == kind), {})


def _from(records: list[dict[str, Any]], at: int) -> list[Any]:
    """A trace cut to the steps from ``at`` on (its ``init`` record left out)."""
    header = [r for r in records if r.get("type") == Record.PARAMS][-1:]
    return header + [r for r in records if r.get("type") == Record.STEP and r.get("step", -1) >= at]


def _samples(rec: dict[str, Any]) -> set[Any]:
    xs, ys = rec.get("inputs_rows", []), rec.get("targets_rows", [])
    return set(zip(xs, ys)) if len(xs) == len(ys) else set(xs)


def step_parting(a: list[Any], c: list[Any], at: int) -> Optional[compare.Parting]:
    """Where the resumed run's steps first part from the uninterrupted run's, from step K on.
    A data parting is ``order`` when the resumed batch's samples all occur somewhere in the
    uninterrupted run (any step), else ``content``."""
    parting = compare.first_parting(_from(a, at), _from(c, at))
    if parting is not None and parting.stage == "data":
        everywhere = set().union(*(_samples(r) for r in a if r.get("type") == Record.STEP))
        here = next((_samples(r) for r in c if r.get("type") == Record.STEP and r["step"] == parting.step), set())
        parting.data = "order" if here and here <= everywhere else "content"
    return parting


def state_differences(a: list[Any], c: list[Any]) -> list[Any]:
    """What differs between A's state after step K-1 and C's right after the load."""
    left, right = record(a, Record.STATE), record(c, Record.STATE)
    if not left or not right:
        return []
    return state.differences(left, right)


def moot_knobs(a: list[Any], c: list[Any]) -> frozenset[Any]:
    """Knobs whose piece C's load already restored as A had it."""
    return frozenset(state.moot(record(a, Record.STATE), record(c, Record.STATE)))


def divergence(diffs: list[Any], parting: Optional[compare.Parting], at: int) -> Optional[ResumeDivergence]:
    """The first divergence: the state when it differs and the steps part too (a state
    difference nothing trains on is no divergence), else the steps' first parting."""
    if parting is None:
        return None
    if diffs:
        first = diffs[0]
        tensor = first.name if first.name else first.piece
        if first.piece == "optimizer state":
            tensor = f"optimizer state of {first.name}"
        return ResumeDivergence(at, "state", first.module if first.name else None, tensor)
    module = parting.tensor.rpartition(".")[0] if parting.tensor and parting.stage in (
        "backward", "optimizer") and "." in parting.tensor else None
    assert parting.step is not None  # the traces compared are cut to steps: no init parting
    return ResumeDivergence(parting.step, parting.stage, module, parting.tensor)


def _loss(rec: Optional[dict[str, Any]]) -> Optional[float]:
    return rec.get("loss_value") if rec else None


def timeline(a: list[Any], c: list[Any], at: int, steps: int, state_differs: bool) -> list[Any]:
    """Rows from a little before K to S-1: each stage of C against A (``before`` for steps
    the resumed run did not make), plus the losses."""
    sa = {r["step"]: r for r in a if r.get("type") == Record.STEP}
    sc = {r["step"]: r for r in c if r.get("type") == Record.STEP}
    rows = []
    for step in range(max(0, at - CONTEXT), steps):
        ra, rc = sa.get(step), sc.get(step)
        if step < at:
            stages = {s: "before" for s in compare.STEP_STAGES}
        elif ra is None or rc is None:
            stages = {s: "missing" for s in compare.STEP_STAGES}
        else:
            stages = compare.stage_states(ra, rc)
        if step == at:
            stages = {"state": "differ" if state_differs else "agree", **stages}
        rows.append(ResumeStep(step, stages, _loss(ra), _loss(rc)))
    return rows
