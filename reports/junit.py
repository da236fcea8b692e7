"""JUnit XML in pytest's ``xunit2`` shape: one ``<testcase>`` per check.

GitLab, Jenkins and most CI dashboards read this format; they show a failure's ``message``
attribute as the headline and its text as the details, so the text carries the explanation, the
place in the user's code and the fix. Built with :mod:`xml.etree.ElementTree`, which escapes
every string; characters that XML 1.0 cannot carry at all (most control characters, lone
surrogates, U+FFFE/U+FFFF) are removed first, and line endings are normalized to ``\\n`` as an
XML parser would, so what a reader parses back is exactly what was written.
"""
from __future__ import annotations

import datetime
import platform
import re
import xml.etree.ElementTree as ET
from typing import Iterable, Optional

from audit.probes.results import Check

# Everything outside XML 1.0's Char production:
# #x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] | [#x10000-#x10FFFF]
_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(value: object) -> str:
    """``value`` as a string an XML 1.0 document can hold and a parser returns unchanged:
    forbidden characters removed, ``\\r\\n`` and ``\\r`` turned into ``\\n``."""
    text = "" if value is None else str(value)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _NOT_XML.sub("", text)


def failure_text(check: Check) -> str:
    """The body of a failed check's ``<failure>``: explanation, place and fix."""
    parts = []
    if check.message:
        parts.append(check.message.strip("\n"))
    if check.where:
        parts.append(f"Where: {check.where}")
    if check.fix:
        parts.append("Fix:\n" + check.fix.strip("\n"))
    return xml_text("\n\n".join(parts) or "failed")


def _headline(check: Check) -> str:
    text = check.message.strip().split("\n", 1)[0] if check.message else "failed"
    return xml_text(text if len(text) <= 300 else text[:299] + "…")


def junit_xml(checks: Iterable[Check], suite: str = "audit", *,
              timestamp: Optional[str] = None, hostname: Optional[str] = None,
              time: float = 0.0) -> str:
    """The checks as a JUnit XML document (a ``str`` with an XML declaration).

    ``timestamp`` (ISO 8601, default now in local time with its offset) and ``hostname``
    (default this machine's name) fill the ``<testsuite>`` attributes pytest writes; ``time``
    is the suite's duration in seconds. Each check becomes
    ``<testcase classname="audit.<audit>" name="<check name>" time="0">`` with a
    ``<failure message=...>`` (explanation and fix as its text) when it failed, or
    ``<skipped message=...>`` when it was skipped.
    """
    checks = list(checks)
    if timestamp is None:
        timestamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    if hostname is None:
        hostname = platform.node() or "localhost"
    failures = sum(1 for c in checks if not c.passed and not c.skipped)
    skipped = sum(1 for c in checks if c.skipped)

    root = ET.Element("testsuites")
    suite_el = ET.SubElement(root, "testsuite", {
        "name": xml_text(suite),
        "errors": "0",
        "failures": str(failures),
        "skipped": str(skipped),
        "tests": str(len(checks)),
        "time": f"{max(float(time), 0.0):.3f}",
        "timestamp": xml_text(timestamp),
        "hostname": xml_text(hostname),
    })
    for check in checks:
        case = ET.SubElement(suite_el, "testcase", {
            "classname": xml_text(f"audit.{check.audit}"),
            "name": xml_text(check.name),
            "time": "0",
        })
        if check.skipped:
            ET.SubElement(case, "skipped", {"type": "audit.skip",
                                            "message": _headline(check) if check.message
                                            else "skipped"})
        elif not check.passed:
            failure = ET.SubElement(case, "failure", {"message": _headline(check)})
            failure.text = failure_text(check)
    ET.indent(root, space="  ")
    body = ET.tostring(root, encoding="unicode", short_empty_elements=True)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + body + "\n"


def write(checks: Iterable[Check], path: str, suite: str = "audit") -> None:
    """Write the JUnit XML document to ``path`` atomically."""
    from audit.reports.files import write_atomic

    write_atomic(path, junit_xml(checks, suite))
