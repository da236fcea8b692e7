"""The Python API beside the CLI, for notebooks and scripts::

    import audit
    result = audit.run("init", my_model_builder, steps=3)   # an InitResult
    result                                                   # in Jupyter: the HTML report
    audit.to_json(result)

:func:`run` drives any registered audit with the same settings the CLI has (keyword names as
the ``[tool.audit.<audit>]`` keys). Audits that train in fresh processes (determinism and the
other multi-run audits) need a target those processes can import: ``"file.py:NAME"`` or
``"package.module:NAME"``; a function defined in a notebook cell cannot cross the process
boundary and is refused with a message saying so. ``init`` runs in this process and also takes
an ``nn.Module`` or any zero-argument callable.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

from audit import registry
from audit.gate.outputs import write_audit_files
from audit.kinds.base import AuditKind, Settings
from audit.probes.errors import UsageError
from audit.probes.results import HTML_RENDERERS
from audit.reports import json_report

for _kind in registry.KINDS:
    HTML_RENDERERS[_kind.result_type] = _kind.html


def _settings(kind: AuditKind, target: Any, options: dict[str, Any]) -> Settings:
    fields = {f.name for f in dataclasses.fields(kind.settings)} - {"script", "config_path"}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise UsageError(f"audit.run({kind.name!r}): unknown setting(s) {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(fields - {'target'}))}")
    if target is not None and not isinstance(target, str) and not kind.in_process:
        raise UsageError(
            f"audit {kind.name} trains in fresh processes, which cannot import an object from "
            "this session (a notebook cell's function, a model object); save the builder in a "
            "file and pass 'file.py:NAME' or 'package.module:NAME'")
    return kind.settings(target=target, **options)


def run(audit: str, target: Any = None, *, out: Optional[str] = None, **options: Any) -> Any:
    """Run the audit called ``audit`` on ``target`` (None: the built-in example) and return
    its result; ``out`` also writes ``<audit>.json`` and ``<audit>.html`` there."""
    kind = registry.get(audit)
    result = kind.run(_settings(kind, target, options), None)
    if out:
        write_audit_files(out, kind, result)
    return result


def to_json(result: Any) -> str:
    """The result as the JSON document the CLI writes."""
    return json_report.dumps(result)
