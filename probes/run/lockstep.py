"""Two replay runs in step, exchanging full tensors through a folder to measure how far apart
they are (fingerprints say *whether* runs differ; this says *by how much*).

The ``ref`` run saves its tensors of each step; the ``cmp`` run, a fresh process running the
same training at the same time, loads them after its own step, computes the differences and
deletes the file. The ref run never gets more than ``window`` steps ahead, so the disk holds at
most that many steps. Either side gives up quietly if its partner stops answering: magnitudes
are then missing, nothing else is lost.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Optional

import torch


class Lockstep:
    def __init__(self, folder: str, role: str, window: int = 2, timeout: float = 300.0,
                 rename: Optional[dict[str, Any]] = None):
        if role not in ("ref", "cmp"):
            raise ValueError(f"role must be 'ref' or 'cmp', not {role!r}")
        self.folder, self.role, self.window, self.timeout = folder, role, window, timeout
        # audit diff: the ref's parameter and module names in the partner's naming
        # ({"params": {name: name}, "modules": {name: name}}), applied before saving.
        self.rename = rename
        self.active = True
        os.makedirs(folder, exist_ok=True)

    def _path(self, step: int) -> str:
        return os.path.join(self.folder, f"step{step + 1:06d}.pt")

    def _wait(self, ready: Callable[[], bool], what: str) -> bool:
        deadline = time.monotonic() + self.timeout
        delay = 0.002
        while not ready():
            if time.monotonic() > deadline or self._partner_done():
                return ready()
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        return True

    def _partner_done(self) -> bool:
        other = "cmp" if self.role == "ref" else "ref"
        return os.path.exists(os.path.join(self.folder, f"{other}.done"))

    def exchange(self, step: int, tensors: dict[str, Any]) -> Optional[dict[str, Any]]:
        """Ref: save this step (returns None). Cmp: compare with ref's step, return the diffs."""
        if not self.active:
            return None
        if self.role == "ref":
            def room() -> bool:
                return sum(name.endswith(".pt") for name in os.listdir(self.folder)) < self.window

            if not self._wait(room, "room"):
                self.active = False
                return None
            tmp = self._path(step) + ".tmp"
            torch.save(renamed(_to_cpu(tensors), self.rename), tmp)
            os.replace(tmp, self._path(step))
            return None
        path = self._path(step)
        if not self._wait(lambda: os.path.exists(path), "partner"):
            self.active = False
            return None
        theirs = torch.load(path, map_location="cpu", weights_only=True)
        os.remove(path)
        return differences(_to_cpu(tensors), theirs)

    def finish(self) -> None:
        with open(os.path.join(self.folder, f"{self.role}.done"), "w") as fh:
            fh.write("done\n")


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_cpu(v) for v in obj]
    return obj


def renamed(tensors: dict[str, Any], rename: Optional[dict[str, Any]]) -> dict[str, Any]:
    """``tensors`` with parameter names (grads, params) and module names (outputs, keyed
    ``name#call``) translated; names without a counterpart are dropped."""
    if not rename:
        return tensors
    params, modules = rename.get("params", {}), rename.get("modules", {})
    out = dict(tensors)
    for key in ("grads", "params"):
        if isinstance(out.get(key), dict):
            out[key] = {params[n]: t for n, t in out[key].items() if n in params}
    if isinstance(out.get("outputs"), dict):
        outputs = {}
        for key, t in out["outputs"].items():
            name, _, call = key.rpartition("#")
            if name in modules:
                outputs[f"{modules[name]}#{call}"] = t
        out["outputs"] = outputs
    return out


def max_abs_diff(a: Any, b: Any) -> Optional[float]:
    """Largest element-wise difference; None when the shapes differ; inf for NaN mismatches."""
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.shape != b.shape:
        return None
    if a.numel() == 0:
        return 0.0
    a64, b64 = a.double(), b.double()
    both_nan = torch.isnan(a64) & torch.isnan(b64)
    diff = (a64 - b64).abs().masked_fill(both_nan, 0.0)
    value = float(diff.max())
    return math.inf if math.isnan(value) else value


def differences(mine: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """Non-zero max-abs differences per named tensor, and the parameter-wide distances."""
    out: dict[str, Any] = {}
    for key in ("inputs", "targets", "fed", "loss_targets"):
        a, b = mine.get(key) or [], theirs.get(key) or []
        worst = None
        for x, y in zip(a, b):
            d = max_abs_diff(x, y)
            worst = d if worst is None or (d is not None and d > worst) else worst
        if len(a) != len(b):
            worst = math.inf
        if worst:
            out[key] = worst
    for key in ("grads", "params", "outputs", "start"):
        a, b = mine.get(key) or {}, theirs.get(key) or {}
        sub = {}
        for name in a.keys() | b.keys():
            d = max_abs_diff(a.get(name), b.get(name))
            if d is None and (name in a) != (name in b):
                d = math.inf
            if d:
                sub[name] = d
        if sub:
            out[key] = sub
    pa, pb = mine.get("params") or {}, theirs.get("params") or {}
    if pa and pa.keys() == pb.keys():
        worst, num, den = 0.0, 0.0, 0.0
        for name in pa:
            x, y = pa[name].double(), pb[name].double()
            if x.shape != y.shape:
                continue
            worst = max(worst, float((x - y).abs().max()) if x.numel() else 0.0)
            num += float(((x - y) ** 2).sum())
            den += float((y ** 2).sum())
        out["param_total"] = {"max_abs": worst,
                              "rel_l2": math.sqrt(num) / math.sqrt(den) if den > 0 else (0.0 if num == 0 else math.inf)}
    return out
