"""The Python API beside the CLI, for notebooks and scripts::

    import audit
    result = audit.run("determinism", build, steps=5)   # build: a function from a notebook cell
    result                                              # in Jupyter: the HTML report
    result.verdict, result.causes, result.first_divergence
    audit.to_json(result)

:func:`run` drives any registered audit with the same settings the CLI has (keyword names as
the ``[tool.audit.<audit>]`` keys). A target is a spec string (``"file.py:NAME"``,
``"package.module:NAME"``) or a Python object: a function or class, defined in a notebook cell
or a script's ``__main__`` included. Audits that train in fresh processes get the object by
value (:mod:`audit.probes.run.shipped`: pickled with cloudpickle before any run, rebuilt in
each run after seeding); what cannot be shipped is a :class:`UsageError` naming it. ``init``
runs in this process and also takes an ``nn.Module``. In a notebook the audit's phases show as
a progress bar, and places in a cell read ``cell N, line L``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
from typing import Any, Iterator, Optional

from audit import registry
from audit.gate.outputs import write_audit_files
from audit.kinds.base import AuditKind, Settings
from audit.gate.progress import notebook_display
from audit.probes.errors import UsageError
from audit.probes.results import HTML_RENDERERS
from audit.reports import json_report

for _kind in registry.KINDS:
    HTML_RENDERERS[_kind.result_type] = _kind.html

#: The settings that name a target (an audit in fresh processes ships an object given there).
TARGET_FIELDS = ("target", "candidate", "target_b")


def _settings(kind: AuditKind, target: Any, options: dict[str, Any]) -> Settings:
    fields = {f.name for f in dataclasses.fields(kind.settings)} - {"script", "config_path"}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise UsageError(f"audit.run({kind.name!r}): unknown setting(s) {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(fields - {'target'}))}")
    return kind.settings(target=target, **options)


@contextlib.contextmanager
def _shipped(kind: AuditKind, settings: Settings) -> Iterator[Settings]:
    """``settings`` with every target given as an object shipped by value (a temporary folder
    holds the pickles while the audit runs); unchanged for an audit that runs in this process."""
    from audit.probes.run import processes, shipped

    processes.name_cells(shipped.kernel_cells())  # places in this process read "cell N" too
    objects = {name: getattr(settings, name) for name in TARGET_FIELDS
               if not isinstance(getattr(settings, name, None), (str, type(None)))}
    if kind.in_process or not objects:
        yield settings
        return
    folder = tempfile.mkdtemp(prefix="audit-target-")
    try:
        yield settings.replace(**{name: shipped.ship(obj, folder) for name, obj in objects.items()})
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run(audit: str, target: Any = None, *, out: Optional[str] = None, **options: Any) -> Any:
    """Run the audit called ``audit`` on ``target`` (None: the built-in example; a spec string;
    or a function or class, from a notebook cell too) and return its result; ``out`` also
    writes ``<audit>.json`` and ``<audit>.html`` there. Settings are the keys of
    ``[tool.audit.<audit>]`` and the common ones (``seed``, ``device``, ...)."""
    kind = registry.get(audit)
    display = notebook_display()
    try:
        with _shipped(kind, _settings(kind, target, options)) as settings:
            result = kind.run(settings, display)
    finally:
        if display is not None:
            display.close()
    if out:
        write_audit_files(out, kind, result)
    return result


def to_json(result: Any) -> str:
    """The result as the JSON document the CLI writes."""
    return json_report.dumps(result)
