"""From knob reruns of the resumed run to proven causes, each with evidence and the fix as code
for the user's save/load.

:func:`plan` orders the knobs the run makes worth trying (what the divergence points at
first); the orchestrator reruns the resumed run with one piece restored by the tool at a time;
:func:`causes` turns the knobs that removed the divergence into causes.
"""
from __future__ import annotations

from typing import Any, Optional

from audit.probes.run.compare import Parting
from audit.probes.results import Cause, KnobTrial
from audit.probes.results.resume import ResumeDivergence
from audit.probes.resume.pieces import PIECES

TITLES = {
    "torch_rng": "torch's RNG state (CPU and CUDA)",
    "numpy_python_rng": "NumPy's and Python's global RNG states",
    "data_position": "the DataLoader's order within the epoch in progress",
    "worker_seeds": "the DataLoader's worker seeds for the epoch in progress",
    "scheduler": "the LR scheduler's state",
    "optimizer_state": "the optimizer's state (momentum buffers, step counts, settings)",
    "grad_scaler": "the grad scaler's state",
    "buffers": "the model's buffers (e.g. BatchNorm running statistics)",
}

FIXES = {
    "torch_rng": (
        "# save\ncheckpoint[\"torch_rng\"] = torch.get_rng_state()\n"
        "if torch.cuda.is_available():\n    checkpoint[\"cuda_rng\"] = torch.cuda.get_rng_state_all()\n"
        "# load\ntorch.set_rng_state(checkpoint[\"torch_rng\"])\n"
        "if \"cuda_rng\" in checkpoint:\n    torch.cuda.set_rng_state_all(checkpoint[\"cuda_rng\"])"),
    "numpy_python_rng": (
        "# save\ncheckpoint[\"numpy_rng\"] = np.random.get_state()\n"
        "checkpoint[\"python_rng\"] = random.getstate()\n"
        "# load\nnp.random.set_state(checkpoint[\"numpy_rng\"])\n"
        "random.setstate(checkpoint[\"python_rng\"])"),
    "data_position": (
        "# give the loader an order that depends only on (seed, epoch), and save the epoch\n"
        "gen = torch.Generator()\n"
        "loader = DataLoader(dataset, batch_size=..., shuffle=True, generator=gen)\n"
        "gen.manual_seed(seed + epoch)          # at the start of every epoch\n"
        "# save\ncheckpoint[\"epoch\"] = epoch\n"
        "# load: reseed with the saved epoch before the resumed pass opens\n"
        "gen.manual_seed(seed + checkpoint[\"epoch\"])\n"
        "# (or torchdata.stateful_dataloader.StatefulDataLoader and its state_dict())"),
    "worker_seeds": (
        "# draw the workers' base seed from a generator reseeded per epoch, not the global RNG\n"
        "gen = torch.Generator()\n"
        "loader = DataLoader(dataset, num_workers=..., generator=gen)\n"
        "gen.manual_seed(seed + epoch)          # at the start of every epoch\n"
        "# save\ncheckpoint[\"epoch\"] = epoch\n"
        "# load\ngen.manual_seed(seed + checkpoint[\"epoch\"])"),
    "scheduler": ("# save\ncheckpoint[\"scheduler\"] = scheduler.state_dict()\n"
                  "# load\nscheduler.load_state_dict(checkpoint[\"scheduler\"])"),
    "optimizer_state": ("# save\ncheckpoint[\"optimizer\"] = optimizer.state_dict()\n"
                        "# load\noptimizer.load_state_dict(checkpoint[\"optimizer\"])"),
    "grad_scaler": ("# save\ncheckpoint[\"scaler\"] = scaler.state_dict()\n"
                    "# load\nscaler.load_state_dict(checkpoint[\"scaler\"])"),
    "buffers": ("# save the whole state dict (parameters and buffers), not only the parameters\n"
                "checkpoint[\"model\"] = model.state_dict()\n"
                "# load\nmodel.load_state_dict(checkpoint[\"model\"])"),
}

_STATE_PIECE_KNOB = {"scheduler": "scheduler", "optimizer state": "optimizer_state",
                     "optimizer settings": "optimizer_state", "buffer": "buffers",
                     "grad scaler": "grad_scaler"}


def applicable(plan_record: dict[str, Any]) -> list[Any]:
    """The knobs that can change anything for this target and plan, in :data:`PIECES` order."""
    out = ["torch_rng", "numpy_python_rng"]
    if plan_record.get("skip") and plan_record.get("loader"):
        out.append("data_position")
        if plan_record.get("workers"):
            out.append("worker_seeds")
    for knob, key in (("scheduler", "scheduler"), ("optimizer_state", None),
                      ("grad_scaler", "scalers"), ("buffers", "buffers")):
        if key is None or plan_record.get(key):
            out.append(knob)
    return out


def plan(plan_record: dict[str, Any], parting: Optional[Parting], state_diffs: list[Any],
         moot: frozenset[Any] = frozenset()) -> list[Any]:
    """The applicable knobs, those the divergence points at first; ``moot`` ones (their piece
    already agrees right after the load) left out."""
    first = [_STATE_PIECE_KNOB[d.piece] for d in state_diffs if d.piece in _STATE_PIECE_KNOB]
    if parting is not None and parting.stage == "data":
        first += ["data_position", "worker_seeds"] if parting.data == "order" else ["worker_seeds", "data_position"]
    if parting is not None and parting.stage == "rng":
        streams = parting.streams or []
        torch_first = any(s.startswith("torch") for s in streams) or not streams
        first += ["torch_rng", "numpy_python_rng"] if torch_first else ["numpy_python_rng", "torch_rng"]
    usable = [k for k in applicable(plan_record) if k not in moot]
    ordered = [k for i, k in enumerate(first) if k in usable and k not in first[:i]]
    return ordered + [k for k in usable if k not in ordered]


def trial(knob: str, removed: bool, steps: int, detail: str = "") -> KnobTrial:
    return KnobTrial(knob=knob, source=PIECES[knob], removed=removed, steps=steps, detail=detail)


def _place(div: ResumeDivergence) -> str:
    if div.stage == "state":
        return f"right after the load ({div.tensor})" if div.tensor else "right after the load"
    text = f"at step {div.step}, stage {div.stage}"
    return text + (f" ({div.tensor})" if div.tensor else "")


def causes(div: ResumeDivergence, trials: list[Any], checkpoint: str, where: Optional[str],
           steps: int) -> list[Any]:
    """A confirmed cause per knob that removed the divergence (alone, or needed together),
    else one ``unknown``."""
    proven = [t for t in trials if t.removed]
    saved = "the target's save/load" if checkpoint == "target" else \
        "the default checkpoint (the model's and optimizer's state dicts)"
    out = []
    for t in proven:
        together = " together with the other pieces named here" if "together" in t.detail else ""
        evidence = (f"The resumed run parts from the uninterrupted one {_place(div)}. With "
                    f"{TITLES[t.knob]} restored by the tool{together}, it matched the "
                    f"uninterrupted run through step {steps - 1}: {saved} leaves it out.")
        out.append(Cause(source=t.source, confirmed=True, evidence=evidence,
                         fix=FIXES[t.knob], where=where))
    if not out:
        tried = ", ".join(t.knob for t in trials) or "none"
        out.append(Cause(
            source="unknown", confirmed=False,
            evidence=(f"The resumed run parts from the uninterrupted one {_place(div)}; no piece "
                      f"the tool restores removed it (tried: {tried})."),
            fix="# make load restore everything save captured; compare the state the two runs\n"
                "# have right after the load (see the report's state differences)",
            where=where))
    return out


def nondeterministic_cause(text: str) -> Cause:
    return Cause(source="unknown", confirmed=True,
                 evidence=("Two uninterrupted runs already differ (" + text + "), so the checkpoint "
                           "cannot be judged: fix the nondeterminism first."),
                 fix="audit determinism TARGET    # finds, localizes and proves the cause",
                 where=None)
