"""One trace from the per-rank traces of a distributed run, for the run-to-run comparison.

Two distributed runs agree when every rank agrees with its counterpart, so the merged trace of
a run carries every rank's fingerprints side by side: a step's data, loss and RNG states are
the ranks' joined, its gradient and parameter lists the ranks' concatenated (named without the
rank, so a parting names the tensor), its module events offset per rank. DDP's ``module.``
prefix is taken off every name, so reports name the user's modules.
"""
from __future__ import annotations

from typing import Any, Optional

from audit.probes.results.records import Record, Status

#: Module call indices of rank r are offset by r * CALL_OFFSET in merged module events.
CALL_OFFSET = 1_000_000


def strip_name(name: str, prefix: str = "module.") -> Optional[str]:
    """The user's name for a DDP-wrapped name (``None`` for the DDP wrapper itself)."""
    if name == "":
        return None
    if name == prefix[:-1]:
        return ""
    if name.startswith(prefix[:-1] + "#"):
        return name[len(prefix) - 1:]
    return name[len(prefix):] if name.startswith(prefix) else name


def user_name(name: str, prefix: str = "module.") -> str:
    """A traced (DDP-wrapped) tensor or module name as the user's model calls it."""
    found = strip_name(name, prefix)
    return name if found is None else found


def _strip_keys(obj: Any, prefix: str) -> Any:
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            name = strip_name(key, prefix) if isinstance(key, str) else key
            out[key if name is None else name] = _strip_keys(value, prefix)
        return out
    return obj


def _max_merge(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    if not present:
        return None
    if all(isinstance(v, dict) for v in present):
        keys = dict.fromkeys(k for v in present for k in v)
        return {k: _max_merge([v.get(k) for v in present]) for k in keys}
    numbers = [v for v in present if isinstance(v, (int, float))]
    return max(numbers) if numbers else present[0]


def _join(values: list[Any]) -> Any:
    return None if all(v is None for v in values) else "|".join(str(v) for v in values)


def _concat(records: list[dict[str, Any]], key: str) -> list[Any]:
    return [x for r in records for x in (r.get(key) or [])]


def _events(records: list[dict[str, Any]], prefix: str) -> list[Any]:
    out = []
    for rank, record in enumerate(records):
        for name, call, phase, value in record.get("modules") or []:
            user = strip_name(name, prefix)
            if user is not None:
                out.append([user, call + rank * CALL_OFFSET, phase, value])
    return out


def merge_step(records: list[dict[str, Any]], prefix: str) -> dict[str, Any]:
    """One step of every rank as one record (the ranks' fields side by side)."""
    first = records[0]
    merged = {"type": Record.STEP, "step": first.get("step")}
    for key in ("inputs", "targets", "loss", "optim"):
        if any(key in r for r in records):
            merged[key] = _join([r.get(key) for r in records])
    for key in ("inputs_rows", "targets_rows", "grads", "params"):
        merged[key] = _concat(records, key)
    merged["loss_value"] = first.get("loss_value")
    merged["rng"] = {(k if rank == 0 else f"{k}@rank{rank}"): v
                     for rank, r in enumerate(records) for k, v in (r.get("rng") or {}).items()}
    merged["seconds"] = max((r.get("seconds") or 0.0) for r in records)
    if any("modules" in r for r in records):
        merged["modules"] = _events(records, prefix)
    diffs = _max_merge([_strip_keys(r.get("diffs"), prefix) for r in records])
    if diffs:
        merged["diffs"] = diffs
    return merged


def _header(headers: list[Any], prefix: str) -> dict[str, Any]:
    first = headers[0]
    names = [strip_name(n, prefix) or n for n in first.get("names", [])]
    modules = [m for m in (strip_name(n, prefix) for n in first.get("modules", [])) if m is not None]
    return {"type": Record.PARAMS, "names": names * len(headers), "modules": modules,
            "shapes": (first.get("shapes") or []) * len(headers)}


def _by_type(records: list[dict[str, Any]], kind: str) -> list[Any]:
    return [r for r in records if r.get("type") == kind]


def merge(rank_traces: list[Any], prefix: str = "module.", blame: Optional[int] = None) -> list[Any]:
    """The merged trace of one distributed run (``rank_traces`` in rank order); ``blame`` is
    the rank that failed first, whose end record speaks for the run."""
    if not rank_traces:
        return []
    out = []
    for env in _by_type(rank_traces[0], Record.ENV):
        sources = env.get("module_sources") or {}
        out.append(dict(env, module_sources={user_name(k, prefix): v for k, v in sources.items()}))
    headers = [(_by_type(t, Record.PARAMS) or [{}])[-1] for t in rank_traces]
    if all(headers):
        out.append(_header(headers, prefix))
    inits = [(_by_type(t, Record.INIT) or [None])[0] for t in rank_traces]
    if all(inits):
        init = {"type": Record.INIT, "params": _concat(inits, "params")}
        diffs = _max_merge([_strip_keys(i.get("diffs"), prefix) for i in inits])
        if diffs:
            init["diffs"] = diffs
        out.append(init)
    steps = [_by_type(t, Record.STEP) for t in rank_traces]
    for i in range(min(len(s) for s in steps)):
        out.append(merge_step([s[i] for s in steps], prefix))
    end = _end([(_by_type(t, Record.END) or [{}])[-1] for t in rank_traces], blame)
    if end:
        out.append(end)
    return out


def _end(ends: list[Any], blame: Optional[int] = None) -> dict[str, Any]:
    """Rank 0's end record, unless a rank did not end well: then the rank's that failed first
    (``blame``), or the lowest such rank's."""
    order = list(range(len(ends)))
    if blame is not None and blame < len(ends):
        order.remove(blame)
        order.insert(0, blame)
    for rank in order:
        end = ends[rank]
        if end.get("status") not in (Status.OK, Status.ENDED_EARLY):
            bad = dict(end)
            if end.get("message"):
                bad["message"] = f"rank {rank}: {end['message']}"
            return bad
    return dict(ends[0])
