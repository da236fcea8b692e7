"""Plain-text summaries for the terminal and CI logs.

No colours unless ``color=True`` (ANSI). Lines are wrapped to ``width`` (default 88) so the
output reads the same in a terminal, a CI log or a test; nothing here asks the terminal for its
size -- the caller may pass ``shutil.get_terminal_size().columns``. Code (fixes,
recommendations) is never wrapped. Control characters in user strings are removed, so a module
name cannot smuggle terminal escape sequences.
"""
from __future__ import annotations

import textwrap
from typing import Optional

from audit.probes.results import DeterminismResult, GateResult, InitResult
from audit.reports.common import (
    RUN_STATUS_TITLES,
    steps_text,
    STAGE_MEANING,
    determinism_headline,
    determinism_sentence,
    final_loss,
    finding_advice,
    finding_numbers,
    finding_title,
    fmt_loss,
    fmt_num,
    init_headline,
    one_line,
    ordered_schemes,
    shorten,
    source_title,
    stage_title,
    strip_controls,
)

DEFAULT_WIDTH = 88
_MIN_WIDTH = 40


class _Style:
    """ANSI styling that is a no-op when colour is off."""

    CODES = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "cyan": "36",
             "fail": "1;31", "pass": "1;32", "error": "1;33"}

    def __init__(self, color: bool) -> None:
        self.color = color

    def __call__(self, text: str, style: str) -> str:
        if not self.color or not text:
            return text
        return f"\x1b[{self.CODES[style]}m{text}\x1b[0m"


class _Writer:
    def __init__(self, width: Optional[int], color: bool) -> None:
        self.width = max(int(width or DEFAULT_WIDTH), _MIN_WIDTH)
        self.s = _Style(color)
        self.lines: list[str] = []

    def add(self, line: str = "") -> None:
        self.lines.append(line)

    def blank(self) -> None:
        if self.lines and self.lines[-1] != "":
            self.lines.append("")

    def wrap(self, text: str, indent: str = "  ", first: Optional[str] = None) -> None:
        """Wrap prose; keeps the author's paragraph breaks."""
        first = indent if first is None else first
        paragraphs = strip_controls(text).split("\n")
        for n, paragraph in enumerate(paragraphs):
            paragraph = " ".join(paragraph.split())
            if not paragraph:
                continue
            self.lines.extend(textwrap.wrap(
                paragraph, width=self.width, initial_indent=first if n == 0 else indent,
                subsequent_indent=indent, break_on_hyphens=False, break_long_words=True)
                or [first.rstrip()])

    def code(self, text: str, indent: str = "    ") -> None:
        for line in strip_controls(text).strip("\n").split("\n"):
            self.add(self.s(indent + line.rstrip(), "cyan") if line.strip() else "")

    def fields(self, pairs: list[tuple[str, str]], indent: str = "  ") -> None:
        """Aligned ``label  value`` lines; long values wrap under the value column."""
        pad = max(len(label) for label, _ in pairs) + 2
        for label, value in pairs:
            head = indent + self.s(label.ljust(pad), "dim")
            rest = " " * (len(indent) + pad)
            wrapped = textwrap.wrap(one_line(value), width=max(self.width - len(rest), 20),
                                    break_on_hyphens=False) or [""]
            self.add(head + wrapped[0])
            for more in wrapped[1:]:
                self.add(rest + more)

    def heading(self, text: str) -> None:
        self.blank()
        self.add(self.s(text, "bold"))

    def text(self) -> str:
        while self.lines and self.lines[-1] == "":
            self.lines.pop()
        return "\n".join(self.lines) + "\n"


def _verdict(w: _Writer, audit: str, status: str, label: str) -> None:
    badge = {"pass": "PASS", "fail": "FAIL", "error": "ERROR"}[status]
    w.add(f"{w.s('audit ' + audit, 'bold')}  {w.s(badge, status)}  {w.s(label, 'bold')}")


def _report_line(w: _Writer, report_path: Optional[str]) -> None:
    if report_path:
        w.blank()
        w.add(f"Report: {strip_controls(report_path)}")


# --------------------------------------------------------------------------- determinism


def determinism_summary(result: DeterminismResult, report_path: Optional[str] = None, *,
                        color: bool = False, width: Optional[int] = None) -> str:
    """Verdict; where the runs part (step, stage, module, tensor, max |diff|); the causes with
    their evidence, whether each is confirmed, the fix as code and the file:line; escaped
    randomness; crashed runs; the report path."""
    w = _Writer(width, color)
    status, title = determinism_headline(result)
    _verdict(w, "determinism", status, title)
    w.wrap(determinism_sentence(result))
    seeded = "the script's own seeding" if result.mode == "script" else f"seed {result.seed}"
    facts = (f"{result.runs} runs x {steps_text(result)}, {seeded}, "
             f"device {one_line(result.device)}")
    if result.target:
        facts += f", target {one_line(result.target)}"
    if result.mode == "script":
        facts += " (script mode)"
    w.wrap(facts)

    if result.error:
        w.heading("Error")
        w.wrap(result.error)

    bad_runs = [r for r in result.run_info if r.status != "ok"]
    if bad_runs:
        w.heading("Runs that did not finish")
        for run in bad_runs:
            line = (f"run {run.index}: {RUN_STATUS_TITLES.get(run.status, run.status)} after "
                    f"{run.steps_completed} of {result.steps} steps")
            if run.exit_code is not None:
                line += f" (exit {run.exit_code})"
            if run.message:
                line += f": {one_line(run.message)}"
            w.wrap(line, indent="    ", first="  - ")

    div = result.first_divergence
    if div is not None:
        w.heading("Where the runs part")
        pairs = [("step", "before the first step" if div.step is None else str(div.step)),
                 ("stage", f"{div.stage} -- {STAGE_MEANING.get(div.stage, stage_title(div.stage))}")]
        if div.module:
            pairs.append(("module", div.module))
        if div.tensor:
            pairs.append(("tensor", div.tensor))
        pairs.append(("max |diff|", fmt_num(div.max_abs_diff)))
        last = next((g for g in reversed(result.growth) if g.max_abs_diff is not None), None)
        if last is not None and div.max_abs_diff is not None and last.max_abs_diff is not None \
                and last.max_abs_diff > div.max_abs_diff:
            pairs.append(("grows to", f"{fmt_num(last.max_abs_diff)} by step {last.step}"
                          + (f" (relative L2 {fmt_num(last.rel_l2)})"
                             if last.rel_l2 is not None else "")))
        w.fields(pairs)

    if result.causes:
        w.heading("Why")
        for n, cause in enumerate(result.causes, 1):
            state = "confirmed" if cause.confirmed else "not confirmed"
            source = one_line(cause.source)
            head = f"  {n}. {source_title(source)}"
            tag = f"[{source}, {state}]"
            styled = (f"  {n}. {w.s(source_title(source), 'bold')}",
                      f"[{source}, {w.s(state, 'green' if cause.confirmed else 'yellow')}]")
            if len(head) + 2 + len(tag) <= w.width:
                w.add(f"{styled[0]}  {styled[1]}")
            else:
                w.add(styled[0])
                w.add(f"     {styled[1]}")
            if cause.evidence:
                w.wrap(cause.evidence, indent="     ")
            if cause.where:
                w.wrap(f"at {cause.where}", indent="        ", first="     ")
            if cause.fix:
                w.add("     fix:")
                w.code(cause.fix, indent="       ")
            w.blank()
    elif div is not None:
        w.heading("Why")
        w.wrap("No cause was identified: no knob removed the divergence.")

    if result.latent_sources:
        w.heading("Sources that act only sometimes")
        for n, item in enumerate(result.latent_sources, 1):
            w.add(f"  {n}. {w.s(source_title(one_line(item.source)), 'bold')}  [{one_line(item.source)}]")
            w.wrap(item.evidence, indent="     ")
            if item.tried:
                w.wrap(item.tried, indent="     ")
            if item.where:
                w.wrap(f"at {item.where}", indent="        ", first="     ")
            w.add("     fix:")
            w.code(item.fix, indent="       ")

    if result.rng_escapes:
        w.heading("Generators the seed does not reach")
        rows = [(one_line(e.kind), one_line(e.where or "unknown place"),
                 f"x{e.count}") for e in result.rng_escapes]
        a = min(max(len(r[0]) for r in rows), w.width // 2)
        b = min(max(len(r[1]) for r in rows), w.width // 3)
        for kind, where, count in rows:
            w.add(f"  {shorten(kind, a).ljust(a)}  {shorten(where, b).ljust(b)}  {count}")

    _report_line(w, report_path)
    return w.text()


# --------------------------------------------------------------------------- init


def init_summary(result: InitResult, report_path: Optional[str] = None, *,
                 color: bool = False, width: Optional[int] = None) -> str:
    """A compact table of the schemes (verdict, findings, final loss, score), the recommendation
    with its code, and the default init's findings with what to do about each."""
    w = _Writer(width, color)
    status, title = init_headline(result)
    _verdict(w, "init", status, title)
    default = result.scheme("default")
    if default is not None and default.findings:
        count = len(default.findings)
        w.wrap(f"{count} finding{'s' if count != 1 else ''} for the model's own init.")
    facts = f"{len(result.schemes)} schemes, {result.steps} steps, seed {result.seed}, " \
            f"device {one_line(result.device)}"
    if result.target:
        facts += f", target {one_line(result.target)}"
    w.wrap(facts)
    if result.error:
        w.heading("Error")
        w.wrap(result.error)

    if result.schemes:
        w.blank()
        name_width = min(max(max(len(one_line(s.name)) for s in result.schemes), 6), 28,
                         max(w.width - 54, 10))
        header = (f"  {'scheme'.ljust(name_width)}  {'verdict':<9}  {'findings':>8}  "
                  f"{'final loss':>10}  {'score':>7}")
        w.add(w.s(header, "dim"))
        for scheme in ordered_schemes(result):
            loss = final_loss(scheme)
            verdict = "error" if scheme.error else scheme.verdict
            mark = "* " if scheme.name == result.recommended else "  "
            line = (f"{mark}{shorten(one_line(scheme.name), name_width).ljust(name_width)}  "
                    f"{w.s(verdict.ljust(9), 'green' if verdict == 'healthy' else 'red')}  "
                    f"{len(scheme.findings):>8}  {fmt_loss(loss):>10}  "
                    f"{fmt_num(scheme.score, 3):>7}")
            if scheme.name == result.recommended:
                line += "  recommended"
            w.add(line.rstrip())
        errors = [s for s in result.schemes if s.error]
        for scheme in errors:
            w.wrap(f"{scheme.name}: {scheme.error}", indent="    ", first="  ! ")

    w.heading("Recommendation")
    if result.recommended:
        w.wrap(f"Use {result.recommended}."
               + (f" {result.recommendation_reason}" if result.recommendation_reason else ""))
        if result.recommendation_code:
            w.code(result.recommendation_code)
    else:
        w.wrap(result.recommendation_reason or "No scheme could be recommended.")

    if default is not None and default.findings:
        w.heading("Findings for the model's own init")
        for finding in default.findings:
            head = finding_title(finding.kind)
            if finding.layer:
                head += f" at {one_line(finding.layer)}"
            head += finding_numbers(finding)
            w.wrap(head, indent="    ", first="  - ")
            if finding.message:
                w.wrap(finding.message, indent="    ")
            advice = finding_advice(finding.kind)
            if advice:
                w.wrap("What to do: " + advice, indent="    ")
    _report_line(w, report_path)
    return w.text()


# --------------------------------------------------------------------------- the gate


def check_summary(gate: GateResult, *, color: bool = False, width: Optional[int] = None) -> str:
    """One line per check (PASS/FAIL/SKIP), the explanation, place and fix of each failure,
    baseline regressions and the reports written."""
    w = _Writer(width, color)
    failed = [c for c in gate.checks if not c.passed and not c.skipped]
    total = len(gate.checks)
    if failed:
        _verdict(w, "check", "fail", f"{len(failed)} of {total} checks failed")
    else:
        skipped = sum(1 for c in gate.checks if c.skipped)
        label = f"all {total - skipped} checks passed" if total else "no checks ran"
        if skipped:
            label += f" ({skipped} skipped)"
        _verdict(w, "check", "pass", label)
    w.blank()
    audit_width = min(max([len(one_line(c.audit)) for c in gate.checks] + [5]), 16)
    for check in gate.checks:
        if check.skipped:
            badge = w.s("SKIP", "yellow")
        elif check.passed:
            badge = w.s("PASS", "green")
        else:
            badge = w.s("FAIL", "red")
        indent = " " * (10 + audit_width)
        audit = shorten(one_line(check.audit), audit_width).ljust(audit_width)
        name = textwrap.wrap(one_line(check.name), width=max(w.width - len(indent), 20),
                             break_on_hyphens=False) or [""]
        w.add(f"  {badge}  {audit}  {name[0]}".rstrip())
        w.lines.extend(indent + more for more in name[1:])
        if not check.passed or check.skipped:
            if check.message:
                w.wrap(check.message, indent=indent)
            if check.where and not check.passed:
                w.wrap(f"at {check.where}", indent=indent + "   ", first=indent)
            if check.fix and not check.passed and not check.skipped:
                w.add(f"{indent}fix:")
                w.code(check.fix, indent=indent + "  ")
    if gate.baseline_regressions:
        w.heading("Regressions against the baseline")
        for item in gate.baseline_regressions:
            w.wrap(str(item), indent="    ", first="  - ")
    if gate.reports:
        w.heading("Reports")
        for audit, name in gate.reports.items():
            w.add(f"  {one_line(audit)}: {one_line(name)}")
    return w.text()
