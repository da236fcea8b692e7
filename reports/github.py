"""GitHub Actions workflow commands: ``::error file=F,line=L,title=T::message`` annotations
for failed checks that point at a place in the user's code.

Escaping follows the runner (``actions/toolkit`` ``command.ts``): in the message (data)
``%`` -> ``%25``, ``\\r`` -> ``%0D``, ``\\n`` -> ``%0A``; in property values additionally
``:`` -> ``%3A`` and ``,`` -> ``%2C``. So a message can span lines in the annotation, yet no
user string can end the command early or start a new one.
"""
# No ``from __future__ import annotations`` here: this module's own ``annotations`` would
# shadow it (every annotation below is valid at run time on Python 3.10).
from typing import Iterable, Optional

from audit.probes.results import Check
from audit.reports.common import split_where, strip_controls


def escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def unescape_data(text: str) -> str:
    """The runner's decoding of :func:`escape_data` (for tests and tools reading logs)."""
    return text.replace("%0A", "\n").replace("%0D", "\r").replace("%25", "%")


def unescape_property(text: str) -> str:
    return unescape_data(text.replace("%2C", ",").replace("%3A", ":"))


def _clean(text: object) -> str:
    """Control characters out (they would garble the log), except newlines."""
    return strip_controls(text)


def annotation(check: Check, level: str = "error") -> Optional[str]:
    """The workflow command for one check, or ``None`` when it passed, was skipped or has
    no place in the user's code."""
    if check.passed or check.skipped or not check.where:
        return None
    path, line, column = split_where(check.where)
    if not path:
        return None
    props = [f"file={escape_property(_clean(path))}"]
    if line is not None:
        props.append(f"line={line}")
        if column is not None:
            props.append(f"col={column}")
    props.append(f"title={escape_property(_clean(f'audit {check.audit}: {check.name}'))}")
    message = _clean(check.message).strip() or _clean(f"{check.name} failed")
    if check.fix:
        message += "\n\nFix:\n" + _clean(check.fix).strip("\n")
    return f"::{level} {','.join(props)}::{escape_data(message)}"


def annotations(checks: Iterable[Check]) -> list[str]:
    """One ``::error`` line per failed check with a ``where``, in the checks' order."""
    return [line for line in (annotation(check) for check in checks) if line is not None]
