"""How much and where, once two sides part: the stage (``loss`` told from ``forward``), the
magnitudes from the lockstep replay, the loss curves, the drift and the environment."""
from __future__ import annotations

import math
from typing import Any, Optional

from audit.probes.run import compare
from audit.probes.results import GrowthPoint
from audit.probes.results.diff import ROUNDING_LEVEL, LossCurves
from audit.probes.run.machines import environment_changes

__all__ = ["environment_changes"]  # moved to run/ (determinism across nodes uses it too)

def _rel(x: float, y: float) -> float:
    if x == y:
        return 0.0
    if not (math.isfinite(x) and math.isfinite(y)):
        return math.inf
    return abs(x - y) / max(abs(x), abs(y))


def loss_curves(a: list[Any], b: list[Any]) -> LossCurves:
    """Both curves and their largest relative difference (over the steps both made)."""
    worst, at = None, None
    for step, (x, y) in enumerate(zip(a, b)):
        if x is None or y is None:
            continue
        r = _rel(float(x), float(y))
        if worst is None or r > worst:
            worst, at = r, step
    return LossCurves(a=list(a), b=list(b), max_rel_diff=worst, step_of_max=at if worst else None)


def _record(records: list[dict[str, Any]], step: Optional[int]) -> dict[str, Any]:
    _, init, steps = compare.split(records)
    if step is None:
        return init
    return next((r for r in steps if r.get("step") == step), {})


def _outputs_agree(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Every module call both sides made has the same output (and there is one)."""
    outs_a = {(e[0], e[1]): e[3] for e in a.get("modules") or [] if e[2] == "out"}
    outs_b = {(e[0], e[1]): e[3] for e in b.get("modules") or [] if e[2] == "out"}
    common = outs_a.keys() & outs_b.keys()
    return bool(common) and all(outs_a[k] == outs_b[k] for k in common)


def place(parting: Any, detail_a: list[Any], detail_b: list[Any]) -> tuple[Any, ...]:
    """(stage, module, tensor) in side b's names, from the detail traces (side a already in
    b's names). A forward difference where every module's output agrees is ``loss``."""
    stage, tensor = parting.stage, parting.tensor
    if stage not in ("forward", "backward"):
        return stage, None, tensor
    if stage == "backward":  # a module's output may differ while the loss rounds alike
        module, _ = compare.localize(detail_b, detail_a, parting.step, "forward")
        if module is not None:
            return "forward", module, None
    module, found = compare.localize(detail_b, detail_a, parting.step, stage)
    if stage == "forward" and module is None and _outputs_agree(
            _record(detail_a, parting.step), _record(detail_b, parting.step)):
        return "loss", None, None
    return stage, module, found or tensor


def owner_of(tensor: Optional[str], header: dict[str, Any]) -> Optional[str]:
    """The module a parameter belongs to (None for the batch or an unknown tensor)."""
    if tensor is None or tensor not in (header.get("names") or []):
        return None
    return tensor.rpartition(".")[0]


def magnitude(step: Optional[int], stage: str, module: Optional[str], tensor: Optional[str],
              detail_b: list[Any], loss: LossCurves) -> Optional[float]:
    """The largest difference where the sides part: from the lockstep differences side b's
    replay recorded, or from the loss values for the ``loss`` stage."""
    if stage == "loss":
        if step is None or step >= min(len(loss.a), len(loss.b)):
            return None
        la, lb = loss.a[step], loss.b[step]
        return abs(float(la) - float(lb)) if la is not None and lb is not None else None
    diffs = _record(detail_b, step).get("diffs") or {}
    if stage == "data":
        return diffs.get(tensor or "inputs")
    key = {"forward": "outputs", "backward": "grads", "optimizer": "params", "init": "params"}.get(stage)
    found = diffs.get(key) or {}
    if stage == "forward" and module is not None and f"{module}#0" in found:
        return found[f"{module}#0"]
    return found.get(tensor) or (max(found.values()) if found else None)


def growth(detail_b: list[Any]) -> list[Any]:
    """How far apart the sides' parameters are after each step (lockstep replay)."""
    out = []
    for r in compare.split(detail_b)[2]:
        total = (r.get("diffs") or {}).get("param_total")
        if total:
            out.append(GrowthPoint(step=r["step"], max_abs_diff=total["max_abs"], rel_l2=total["rel_l2"]))
    return out


def drift(loss: LossCurves, points: list[Any]) -> Optional[str]:
    """``rounding`` while the loss and the parameters stay within :data:`ROUNDING_LEVEL` of
    each other (relative), else ``material``."""
    worst = [loss.max_rel_diff] + [points[-1].rel_l2 if points else None]
    known = [w for w in worst if w is not None]
    if not known:
        return None
    return "material" if max(known) > ROUNDING_LEVEL else "rounding"


def mark_loss(timeline: list[Any], step: Optional[int]) -> None:
    """At the first difference, the forward pass agreed and the loss did not."""
    for row in timeline:
        if row.step == step and row.step is not None:
            row.stages["forward"] = "agree"
            row.stages["loss"] = "differ"


def add_loss_column(timeline: list[Any]) -> None:
    """Each step's ``loss`` state (the plain traces compare the loss: the forward column)."""
    for row in timeline:
        if row.step is not None and "forward" in row.stages:
            row.stages["loss"] = row.stages["forward"]
