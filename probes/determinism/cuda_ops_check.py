"""The gate's ``cuda ops`` check, from a determinism result's CUDA op scan (a pure function),
and the scan's word in a ``nondeterministic_algorithm`` cause.

Warns by default (the check passes and says what it found); ``level="fail"`` (the face's
``[tool.audit.determinism] cuda_ops = "fail"``) fails it when the step runs any op PyTorch
documents as nondeterministic on CUDA.
"""
from __future__ import annotations

from typing import Any, Optional

from audit.probes.results import Check, DeterminismResult

NAME = "no CUDA-nondeterministic ops"
LEVELS = ("warn", "fail")


def _place(modules: list[Optional[str]]) -> str:
    names = ["the model itself" if m == "" else "outside the model (loss or step code)"
             if m is None else m for m in modules]
    return ", ".join(names)


def _fix(scan: Any) -> str:
    lines = []
    if any(o.category == "made_deterministic" for o in scan.ops):
        lines.append("torch.use_deterministic_algorithms(True)  # before training")
        if scan.cublas_workspace_required:
            lines.append("# and CUBLAS_WORKSPACE_CONFIG=:4096:8 in the environment")
    raising = sorted({o.doc for o in scan.ops if o.category == "raises"})
    if raising:
        lines.append("# no deterministic implementation on CUDA (replace, or run them on the CPU):")
        lines += [f"#   {doc}" for doc in raising]
    return "\n".join(lines)


def cuda_ops_check(result: DeterminismResult, level: str = "warn") -> Optional[Check]:
    """``None`` when no scan ran (script mode, a crashed first run); else one check."""
    if level not in LEVELS:
        raise ValueError(f"cuda_ops level must be one of {LEVELS}, not {level!r}")
    scan = result.cuda_ops
    if scan is None:
        return None
    if scan.error:
        return Check("determinism", NAME, True, f"the op scan could not run: {scan.error}",
                     skipped=True)
    if not scan.ops:
        return Check("determinism", NAME, True,
                     "the training step runs no op that PyTorch documents as nondeterministic "
                     "on CUDA")
    parts = [f"{o.op} ({o.category.replace('_', ' ')}, {'/'.join(o.passes)}) in "
             f"{_place(o.modules)}" for o in scan.ops]
    message = (f"{len(scan.ops)} op(s) nondeterministic on CUDA: " + "; ".join(parts))
    if level == "warn":
        message = "warning: " + message
    return Check("determinism", NAME, level == "warn", message, _fix(scan))


def cite_scan(causes: list[Any], scan: Any, module: Optional[str]) -> None:
    """Add to a ``nondeterministic_algorithm`` cause's evidence the scanned ops that run in
    the divergent module (or inside it)."""
    if scan is None or module is None:
        return
    inside = [o for o in scan.ops
              if any(m is not None and (m == module or m.startswith(module + ".") or module == "")
                     for m in o.modules)]
    if not inside:
        return
    ops = ", ".join(f"{o.op} ({'/'.join(o.passes)})" for o in inside)
    for cause in causes:
        if cause.source == "nondeterministic_algorithm":
            note = f"the op scan lists {ops} in {module}, documented as nondeterministic on CUDA"
            cause.evidence = f"{cause.evidence}; {note}" if cause.evidence else note
