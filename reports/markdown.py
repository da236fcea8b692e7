"""A GitHub-flavoured markdown summary of ``audit check`` (``summary.md``, and the text that
goes to ``$GITHUB_STEP_SUMMARY``).

A status line, a table of the checks, the explanation and fix of each failure, baseline
regressions and links to the reports. User strings are escaped for where they land: in prose
and table cells, HTML is entity-escaped and markdown punctuation backslash-escaped (``|`` too,
so a message cannot break the table), newlines become ``<br>``; fixes go in fenced code blocks
whose fence is longer than any backtick run inside. The whole summary stays under GitHub's
1 MiB step-summary limit: when it would not, the failure details are cut at a block boundary
and a note says how many were left out.
"""
from __future__ import annotations

import re
from functools import partial
from typing import Callable
from urllib.parse import quote

from audit.probes.results import Check, GateResult
from audit.reports.common import strip_controls

#: GitHub rejects a step summary over 1 MiB; stay clear of it with some room to spare.
GITHUB_SUMMARY_LIMIT = 1024 * 1024
DEFAULT_MAX_BYTES = GITHUB_SUMMARY_LIMIT - 16 * 1024
#: A single message or fix longer than this is cut (the reports have the full text).
MAX_FIELD_CHARS = 20_000

# Characters that start inline markup anywhere in a line. ``_`` between two word characters
# cannot open or close emphasis (GFM), so ``default_rng`` stays readable.
_MD_SPECIAL = re.compile(r"[\\`*\[\]|~#]|(?<![^\W_])_|_(?![^\W_])")
# What starts a block when it opens a line: a list item, a numbered item, a setext underline.
_BLOCK_START = re.compile(r"^([-+=])|^(\d+)([.)])")


def escape_inline(text: object, limit: int = MAX_FIELD_CHARS) -> str:
    """``text`` as literal inline markdown on one line: HTML entities for ``&<>``, a
    backslash before markdown punctuation, ``<br>`` for newlines."""
    text = strip_controls(text)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _MD_SPECIAL.sub(lambda m: "\\" + m.group(0), text)
    lines = [" ".join(line.split()) for line in text.split("\n")]
    text = "<br>".join(line for line in lines if line)
    return _BLOCK_START.sub(lambda m: "\\" + m.group(1) if m.group(1)
                            else m.group(2) + "\\" + m.group(3), text)


def code_block(code: object, language: str = "python", limit: int = MAX_FIELD_CHARS) -> str:
    """A fenced code block that no content can close early."""
    code = strip_controls(code).strip("\n")
    if len(code) > limit:
        code = code[:limit] + "\n# … (cut; see the report for the full text)"
    longest = max((len(run) for run in re.findall(r"`+", code)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{code}\n{fence}"


def _link(name: object) -> str:
    target = quote(strip_controls(name).replace("\\", "/"), safe="/._-~")
    return f"[{escape_inline(name, 200)}]({target})"


def _status_icon(check: Check) -> str:
    if check.skipped:
        return "⏭️"
    return "✅" if check.passed else "❌"


def summary_markdown(gate: GateResult, *, max_bytes: int = DEFAULT_MAX_BYTES,
                     title: str = "audit check") -> str:
    """The gate as GitHub-flavoured markdown, at most ``max_bytes`` bytes of UTF-8."""
    failed = [c for c in gate.checks if not c.passed and not c.skipped]
    skipped = [c for c in gate.checks if c.skipped]
    passed = len(gate.checks) - len(failed) - len(skipped)
    if failed:
        status = (f"## ❌ {escape_inline(title, 200)}: {len(failed)} of {len(gate.checks)} "
                  f"check{'s' if len(gate.checks) != 1 else ''} failed")
    elif gate.checks:
        status = f"## ✅ {escape_inline(title, 200)}: all {passed} checks passed"
    else:
        status = f"## ✅ {escape_inline(title, 200)}: no checks ran"
    counts = [f"{passed} passed", f"{len(failed)} failed"]
    if skipped:
        counts.append(f"{len(skipped)} skipped")
    if gate.baseline_regressions:
        counts.append(f"{len(gate.baseline_regressions)} baseline regression"
                      f"{'s' if len(gate.baseline_regressions) != 1 else ''}")

    head = [status, "", " · ".join(counts), ""]
    verdicts = []
    for summary in gate.summaries.values():
        line = f"**{escape_inline(summary.audit, 100)}:** {escape_inline(summary.title)}"
        if summary.note_code:
            line += (f" ({escape_inline(summary.note_label, 100)}: "
                     f"`{escape_code_span(summary.note_code)}`)")
        verdicts.append(line)
    if verdicts:
        head += ["<br>".join(verdicts), ""]

    table = ["| | Audit | Check | Details |", "|---|---|---|---|"]
    for check in gate.checks:
        details = escape_inline(check.message, 500)
        if check.where and not check.passed:
            where = f"`{escape_code_span(check.where, table=True)}`"
            details = f"{details} ({where})" if details else where
        table.append(f"| {_status_icon(check)} | {escape_inline(check.audit, 100)} | "
                     f"{escape_inline(check.name, 200)} | {details} |")

    # Detail sections are built lazily: a huge gate only pays for the ones that fit.
    blocks: list[Callable[[], list[str]]] = [partial(_failure_block, c) for c in failed]
    if gate.baseline_regressions:
        blocks.append(partial(_regressions_block, gate.baseline_regressions))

    tail = []
    if gate.reports:
        links = " · ".join(f"{escape_inline(audit, 100)}: {_link(name)}"
                           for audit, name in gate.reports.items())
        tail = [f"**Reports:** {links}", ""]

    return _assemble(head, table, blocks, tail, max_bytes)


def _failure_block(check: Check) -> list[str]:
    block = [f"### ❌ {escape_inline(check.audit, 100)}: {escape_inline(check.name, 200)}", ""]
    if check.message:
        block += [escape_inline(check.message), ""]
    if check.where:
        block += [f"**Where:** `{escape_code_span(check.where)}`", ""]
    if check.fix:
        block += ["**Fix:**", "", code_block(check.fix), ""]
    return block


def _regressions_block(items: list[str]) -> list[str]:
    block = ["### Regressions against the baseline", ""]
    block += [f"- {escape_inline(item, 1000)}" for item in items]
    return block + [""]


def _size(lines: list[str]) -> int:
    """Bytes these lines add to the document (each with its newline)."""
    return sum(len(line.encode("utf-8")) + 1 for line in lines)


def _assemble(head: list[str], table: list[str], blocks: list[Callable[[], list[str]]],
              tail: list[str],
              max_bytes: int) -> str:
    """Head, table, detail blocks and tail, cutting rows and blocks (never inside one) so the
    result fits ``max_bytes``; a note says what was left out."""
    budget = max_bytes - _size(head) - _size(tail) - _size([_note(10**6, 10**6), ""])
    parts = head[:]
    rows = table[2:]
    if _size(table) + 1 <= budget:
        parts += table + [""]
        budget -= _size(table) + 1
    else:
        kept = table[:2]
        used = _size(kept)
        for row in rows:
            if used + _size([row]) > budget:
                break
            kept.append(row)
            used += _size([row])
        parts += kept + ["", _note(len(table) - len(kept), len(blocks)), ""] + tail
        return _finish(parts, max_bytes)
    shown = 0
    for build in blocks:
        block = build()
        size = _size(block)
        if size > budget:
            break
        parts += block
        budget -= size
        shown += 1
    if shown < len(blocks):
        parts += [_note(0, len(blocks) - shown), ""]
    return _finish(parts + tail, max_bytes)


def escape_code_span(text: object, table: bool = False) -> str:
    """Text for inside a single-backtick code span: backticks and newlines replaced; in a
    table cell ``|`` is escaped too (GFM splits cells on it even inside code spans)."""
    text = " ".join(strip_controls(text).replace("`", "'").split())[:500]
    return text.replace("|", "\\|") if table else text


def _note(rows: int, blocks: int) -> str:
    what = []
    if rows:
        what.append(f"{rows} check row{'s' if rows != 1 else ''}")
    if blocks:
        what.append(f"{blocks} detail section{'s' if blocks != 1 else ''}")
    return (f"> **Note:** summary truncated to stay under GitHub's 1 MiB step-summary limit; "
            f"{' and '.join(what) or 'some details'} left out. The reports have everything.")


def _finish(parts: list[str], max_bytes: int) -> str:
    text = "\n".join(parts).rstrip("\n") + "\n"
    data = text.encode("utf-8")
    if len(data) > max_bytes:  # only with an absurdly small max_bytes
        text = data[: max(max_bytes - 1, 0)].decode("utf-8", errors="ignore") + "\n"
    return text
