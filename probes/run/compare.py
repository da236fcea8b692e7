"""Comparing traces: where two runs first part, and what agreed step by step.

A trace is the list of records :mod:`probes.run.trace` wrote. Within a step the stages are
checked in the order the step flows: ``data`` (the batch), ``rng`` (global RNG states just
before the forward pass, given data and parameters agree), ``forward`` (the model's outputs
and the loss: the loss alone may round alike while the outputs already differ),
``backward`` (each gradient), ``optimizer`` (each parameter after the update, and at the start
of the next step: a change made outside the optimizer is an ``optimizer`` parting marked
``outside``); ``init`` is the parameters before the first step. Script mode's data made in the
loop (``fed``, ``loss_targets``) count as data, unless the RNG state that could have made
them already differs. An RNG state that differs while nothing it could feed ever differs is
not a divergence: the runs still train bit for bit alike.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

from audit.probes.results import STAGES, NonFinite, StepAgreement
from audit.probes.results.records import Record

STEP_STAGES = ("data", "rng", "forward", "backward", "optimizer")
#: Data fields of a step record: the batch as loaded, and script mode's data seen in the loop.
LOADED, IN_LOOP = ("inputs", "targets"), ("fed", "loss_targets")


@dataclass
class Parting:
    """Where a pair of runs first differ, and the facts a cause needs."""

    step: Optional[int]
    stage: str
    tensor: Optional[str] = None
    streams: list[Any] = field(default_factory=list)  # rng: which generators differ
    data: Optional[str] = None  # "order" | "content" for the data stage
    field: Optional[str] = None  # the data stage's record field: inputs, targets, fed, loss_targets
    outside: bool = False  # optimizer stage: parameters changed between the update and the next step

    def key(self) -> tuple[Any, ...]:
        return (-1 if self.step is None else self.step, STAGES.index(self.stage))


def split(records: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any], list[Any]]:
    """(params header, init record, step records in order) of a trace."""
    # The last header: script mode adds one when an optimizer appears after the first step.
    header: dict[str, Any] = next((r for r in reversed(records) if r.get("type") == Record.PARAMS), {})
    init: dict[str, Any] = next((r for r in records if r.get("type") == Record.INIT), {})
    steps = [r for r in records if r.get("type") == Record.STEP]
    return header, init, steps


def _first_named(names: list[str], a: list[Any], b: list[Any]) -> Optional[str]:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return names[i] if i < len(names) else str(i)
    if len(a) != len(b):
        return names[min(len(a), len(b))] if min(len(a), len(b)) < len(names) else None
    return None


def stage_states(ra: dict[str, Any], rb: dict[str, Any], na: Optional[dict[str, Any]] = None,
                 nb: Optional[dict[str, Any]] = None) -> dict[str, str]:
    """For one step of two runs, each stage's state: 'agree' or 'differ'. ``na``/``nb`` are
    the runs' next step records (their parameters at the start of that step)."""
    data = any(ra.get(k) != rb.get(k) for k in LOADED + IN_LOOP)
    outside = na is not None and nb is not None and na.get("start") != nb.get("start")
    optimizer = ra.get("params") != rb.get("params") or ra.get("optim") != rb.get("optim") or outside
    return {
        "data": "differ" if data else "agree",
        "rng": "differ" if ra.get("rng") != rb.get("rng") else "agree",
        "forward": "differ" if ra.get("loss") != rb.get("loss")
        or ra.get("outputs") != rb.get("outputs") else "agree",
        "backward": "differ" if ra.get("grads") != rb.get("grads") else "agree",
        "optimizer": "differ" if optimizer else "agree",
    }


def _samples(record: dict[str, Any]) -> list[Any]:
    """A step's samples, each as (input fingerprint, target fingerprint) when they pair up."""
    xs, ys = record.get("inputs_rows", []), record.get("targets_rows", [])
    return list(zip(xs, ys)) if len(xs) == len(ys) else list(xs)


def _data_kind(sa: list[Any], sb: list[Any], upto: int) -> str:
    """'order' when the same samples (input with its target) arrived in another order: every
    sample of the parting step in one run turns up somewhere in the other run (in this batch
    or another step's); else 'content'."""
    if Counter(_samples(sa[upto])) == Counter(_samples(sb[upto])):
        return "order"
    all_a = {x for rec in sa for x in _samples(rec)}
    all_b = {x for rec in sb for x in _samples(rec)}
    here_a, here_b = set(_samples(sa[upto])), set(_samples(sb[upto]))
    return "order" if here_a and here_a <= all_b and here_b <= all_a else "content"


def first_parting(a: list[Any], b: list[Any]) -> Optional[Parting]:
    """The first place two traces differ, or None if they agree on every step both made."""
    header, init_a, sa = split(a)
    _, init_b, sb = split(b)
    names = header.get("names", [])
    params_a, params_b = init_a.get("params"), init_b.get("params")
    if params_a is not None and params_b is not None and params_a != params_b:
        # (a run that ended before it made its parameters is a crash, not a parting)
        return Parting(None, "init", _first_named(names, params_a, params_b))
    in_loop = IN_LOOP + (LOADED if header.get("data_source") == "module_inputs" else ())
    pending_rng: Optional[Parting] = None
    for i, (ra, rb) in enumerate(zip(sa, sb)):
        step = ra.get("step", i)
        rng_differs = ra.get("rng") != rb.get("rng")
        if rng_differs and pending_rng is None:
            streams = sorted(k for k in set(ra["rng"]) | set(rb["rng"])
                             if ra["rng"].get(k) != rb["rng"].get(k))
            pending_rng = Parting(step, "rng", None, streams=streams)
        field = next((k for k in LOADED + IN_LOOP if ra.get(k) != rb.get(k)), None)
        if field is not None:
            if pending_rng is not None and (pending_rng.step < step or field in in_loop):
                return pending_rng  # the data made in the loop may come from that RNG state
            tensor = "inputs" if field in ("inputs", "fed") else "targets"
            kind = _data_kind(sa, sb, i) if field in LOADED else "content"
            return Parting(step, "data", tensor, data=kind, field=field)
        computed = _computed_parting(ra, rb, names, step)
        if computed is not None:
            return pending_rng or computed
        if i + 1 < min(len(sa), len(sb)) and sa[i + 1].get("start") != sb[i + 1].get("start"):
            moved = _first_named(names, sa[i + 1].get("start") or [], sb[i + 1].get("start") or [])
            return pending_rng or Parting(step, "optimizer", moved, outside=True)
    return None


def _computed_parting(ra: dict[str, Any], rb: dict[str, Any], names: list[str], step: int) -> Optional[Parting]:
    """The forward, backward or optimizer parting of one step whose data agree."""
    if ra.get("outputs") != rb.get("outputs"):  # the loss alone may round alike
        return Parting(step, "forward", None)
    for stage, key in (("forward", "loss"), ("backward", "grads"), ("optimizer", "params")):
        if stage == "optimizer" and ra.get("optim") != rb.get("optim") and ra.get(key) == rb.get(key):
            return Parting(step, stage, "optimizer state")
        if ra.get(key) != rb.get(key):
            tensor = _first_named(names, ra.get(key, []), rb.get(key, [])) if key != "loss" else None
            return Parting(step, stage, tensor)
    return None


def earliest(partings: list[Any]) -> Optional[Parting]:
    found = [p for p in partings if p is not None]
    return min(found, key=Parting.key) if found else None


def timeline(traces: list[Any]) -> list[Any]:
    """Per step (and the init row), each stage compared across all runs against run 0."""
    if not traces:
        return []
    splits = [split(t) for t in traces]
    rows = []
    inits = [s[1].get("params") for s in splits]
    init_state = "agree" if all(x == inits[0] for x in inits[1:]) else "differ"
    if any(x is None for x in inits):
        init_state = "missing"
    rows.append(StepAgreement(step=None, stages={"init": init_state}))
    longest = max(len(s[2]) for s in splits)
    for i in range(longest):
        stages = {}
        present = [s[2][i] for s in splits if i < len(s[2])]
        if len(present) < len(splits):
            stages = {st: "missing" for st in STEP_STAGES}
        else:
            after = [s[2][i + 1] if i + 1 < len(s[2]) else None for s in splits]
            for other, later in zip(present[1:], after[1:]):
                for st, value in stage_states(present[0], other, after[0], later).items():
                    if value == "differ" or st not in stages:
                        stages[st] = value
        rows.append(StepAgreement(step=i, stages=stages))
    return rows


def rng_only(traces: list[Any]) -> list[Any]:
    """Steps whose RNG states differ although nothing else ever does (a latent difference)."""
    rows = timeline(traces)
    return [r.step for r in rows[1:] if r.stages.get("rng") == "differ"]


# ------------------------------------------------------------------ module localization


def _module_events(record: dict[str, Any]) -> list[Any]:
    return record.get("modules") or []


def localize(a: list[Any], b: list[Any], step: int, stage: str) -> tuple[Optional[str], Optional[str]]:
    """In detail traces, the first module whose inputs agree while its outputs (forward) or
    its gradients (backward) differ; returns (module, tensor)."""
    header, _, sa = split(a)
    _, _, sb = split(b)
    ra = next((r for r in sa if r.get("step") == step), None)
    rb = next((r for r in sb if r.get("step") == step), None)
    if ra is None or rb is None:
        return None, None
    ev_a, ev_b = _module_events(ra), _module_events(rb)
    index_b = {(e[0], e[1], e[2]): e[3] for e in ev_b}
    names = header.get("names", [])
    if stage == "forward":
        inputs = {(e[0], e[1]): e[3] for e in ev_a if e[2] == "in"}
        for name, call, phase, value in ev_a:
            if phase != "out":
                continue
            same_in = inputs.get((name, call)) == index_b.get((name, call, "in"))
            if same_in and value != index_b.get((name, call, "out")):
                return name, None
        return None, None
    if stage == "backward":
        grads_a, grads_b = ra.get("grads", []), rb.get("grads", [])
        differing = {names[i] for i, (x, y) in enumerate(zip(grads_a, grads_b)) if x != y and i < len(names)}
        gouts: dict[tuple[str, int], list[bool]] = {}
        for name, call, phase, value in ev_a:
            if phase.startswith("gout"):
                gouts.setdefault((name, call), []).append(value == index_b.get((name, call, phase)))
        # Walk the backward pass in the order it ran: a module is the culprit when every
        # gradient reaching its output agrees while its own parameters' gradients, or the
        # gradient it sends to its input, differ. The innermost such module comes first.
        for name, call, phase, value in ev_a:
            if not all(gouts.get((name, call), [True])):
                continue
            if phase.startswith("gout"):
                own = sorted(p for p in differing if p.rpartition(".")[0] == name)
                if own:
                    return name, own[0]
            elif phase.startswith("gin") and value != index_b.get((name, call, phase)):
                # A container and its first child share one input tensor: name the child.
                same = [n for n, c, ph, v in ev_a if ph.startswith("gin") and v == value
                        and _inside(n, name) and all(gouts.get((n, c), [True]))]
                name = max(same, key=lambda n: n.count(".") + bool(n), default=name)
                own = sorted(p for p in differing if p.rpartition(".")[0] == name)
                return name, (own[0] if own else None)
        return None, (sorted(differing)[0] if differing else None)
    return None, None


def _inside(name: str, parent: str) -> bool:
    return parent == "" or name == parent or name.startswith(parent + ".")


def first_nonfinite(traces: list[Any]) -> Optional[NonFinite]:
    """The earliest step (then the lowest run) whose loss or gradients were NaN or infinite."""
    found = []
    for run, records in enumerate(traces):
        for r in records:
            if r.get("type") != Record.STEP:
                continue
            loss = r.get("loss_value")
            if loss is not None and not math.isfinite(loss):
                found.append(NonFinite(run, r["step"], "loss", str(loss)))
                break
            if r.get("grads_finite") is False:
                found.append(NonFinite(run, r["step"], "gradient"))
                break
    return min(found, key=lambda n: (n.step, n.run)) if found else None
