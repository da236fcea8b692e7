"""The audit kinds: the one place that knows which audits exist. The CLI, ``audit check``,
baselines, the pytest plugin, the Python API and the reports loop over :data:`KINDS`."""
from __future__ import annotations

from typing import Any
from audit.kinds import compare, determinism, diff, init, record, resume, variance
from audit.kinds.base import AuditKind
from audit.probes.errors import UsageError

#: Every audit, in the order ``audit check`` runs them and the reports list them.
KINDS: tuple[Any, ...] = (determinism.KIND, init.KIND, resume.KIND, variance.KIND, compare.KIND,
                 diff.KIND, record.KIND)


def names() -> tuple[Any, ...]:
    return tuple(kind.name for kind in KINDS)


def get(name: str) -> AuditKind:
    """The kind called ``name``; an unknown name is a usage error naming the known ones."""
    for kind in KINDS:
        if kind.name == name:
            return kind
    raise UsageError(f"unknown audit {name!r}; choose one of: {', '.join(names())}")


def tables() -> dict[str, Any]:
    """Each kind's ``[tool.audit.<name>]`` checker, for :func:`audit.config.load`."""
    return {kind.name: kind.check_table for kind in KINDS}
