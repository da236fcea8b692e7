"""Plain-text summaries for the terminal and CI logs.

No colours unless ``color=True`` (ANSI). Lines are wrapped to ``width`` (default 88) so the
output reads the same in a terminal, a CI log or a test; nothing here asks the terminal for its
size -- the caller may pass ``shutil.get_terminal_size().columns``. Code (fixes,
recommendations) is never wrapped. Control characters in user strings are removed, so a module
name cannot smuggle terminal escape sequences.
"""
from __future__ import annotations

import textwrap
from typing import Any, Optional

from audit.probes.results import BUILTIN_LABEL, DeterminismResult, GateResult, InitResult
from audit.probes.results.cuda_ops import CudaOpsScan
from audit.probes.results.diff import DiffResult, DiffSide, RecordResult
from audit.probes.results.resume import ResumeResult
from audit.probes.results.variance import CompareResult, MetricVariance, VarianceResult
from audit.reports.common import (
    ESCAPE_USE,
    listed_escapes,
    DIFF_STAGE_MEANING,
    DRIFT_WORDS,
    NONFINITE_FIX,
    RUN_STATUS_TITLES,
    steps_text,
    STAGE_MEANING,
    determinism_headline,
    compare_headline,
    compare_sentence,
    determinism_sentence,
    direction_words,
    diff_headline,
    diff_sentence,
    finding_advice,
    finding_numbers,
    finding_title,
    fmt_depth,
    fmt_loss,
    fmt_num,
    fmt_percent,
    fmt_spread,
    init_headline,
    nonfinite_sentence,
    one_line,
    ordered_schemes,
    RESUME_STAGE_MEANING,
    seed_loss,
    resume_headline,
    resume_notes,
    resume_sentence,
    resume_source_title,
    record_headline,
    record_sentence,
    shorten,
    source_title,
    stage_title,
    strip_controls,
    variance_headline,
    variance_sentence,
)
from audit.reports.ranks import rank_lines
from audit.probes.results.records import Status

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


def _bad_runs(w: _Writer, result: DeterminismResult) -> None:
    bad_runs = [r for r in result.run_info if r.status != Status.OK]
    if not bad_runs:
        return
    w.heading("Runs that did not finish")
    for run in bad_runs:
        line = (f"run {run.index}: {RUN_STATUS_TITLES.get(run.status, run.status)} after "
                f"{run.steps_completed} of {result.steps} steps")
        if run.exit_code is not None:
            line += f" (exit {run.exit_code})"
        if run.message:
            line += f": {one_line(run.message)}"
        w.wrap(line, indent="    ", first="  - ")


def _divergence(w: _Writer, result: DeterminismResult) -> None:
    div = result.first_divergence
    assert div is not None  # called only when the runs part
    w.heading("Where the runs part")

    pairs = [("step", "before the first step" if div.step is None else str(div.step)),
             ("stage", f"{div.stage} -- {STAGE_MEANING.get(div.stage, stage_title(div.stage))}")]
    if div.rank is not None:
        pairs.append(("rank", str(div.rank)))
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


def _causes(w: _Writer, result: DeterminismResult) -> None:
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
        _body(w, cause.evidence, cause.where, cause.fix)
        w.blank()


def _body(w: _Writer, evidence: str, where: Optional[str], fix: str) -> None:
    """A cause's (or a latent source's) evidence, place and fix as code, indented under it."""
    if evidence:
        w.wrap(evidence, indent="     ")
    if where:
        w.wrap(f"at {where}", indent="        ", first="     ")
    if fix:
        w.add("     fix:")
        w.code(fix, indent="       ")


def _latent(w: _Writer, result: DeterminismResult) -> None:
    w.heading("Sources that act only sometimes")
    for n, item in enumerate(result.latent_sources, 1):
        w.add(f"  {n}. {w.s(source_title(one_line(item.source)), 'bold')}  [{one_line(item.source)}]")
        w.wrap(item.evidence, indent="     ")
        _body(w, item.tried, item.where, item.fix)


def _escapes(w: _Writer, escapes: list[Any]) -> None:
    w.heading("Generators the seed does not reach")
    rows = [(one_line(e.kind), one_line(e.where or "unknown place"),
             f"x{e.count}") for e in escapes]
    a = min(max(len(r[0]) for r in rows), w.width // 2)
    b = min(max(len(r[1]) for r in rows), w.width // 3)
    for (kind, where, count), e in zip(rows, escapes):
        w.add(f"  {shorten(kind, a).ljust(a)}  {shorten(where, b).ljust(b)}  {count}")
        made = f"made by {one_line(e.made_by)}; " if e.made_by else ""
        w.wrap(made + ESCAPE_USE.get(e.use, one_line(e.use)), indent="    ")


def _determinism_facts(w: _Writer, result: DeterminismResult) -> None:
    seeded = "the script's own seeding" if result.mode == "script" else f"seed {result.seed}"
    facts = (f"{result.runs} runs x {steps_text(result)}, {seeded}, "
             f"device {one_line(result.device)}")
    if result.target:
        facts += f", target {one_line(result.target)}"
    if result.mode == "script":
        facts += " (script mode)"
    w.wrap(facts)


def determinism_summary(result: DeterminismResult, report_path: Optional[str] = None, *,
                        color: bool = False, width: Optional[int] = None) -> str:
    """Verdict; where the runs part (step, stage, module, tensor, max |diff|); the causes with
    their evidence, whether each is confirmed, the fix as code and the file:line; escaped
    randomness; crashed runs; the report path."""
    w = _Writer(width, color)
    status, title = determinism_headline(result)
    _verdict(w, "determinism", status, title)
    w.wrap(determinism_sentence(result))
    _determinism_facts(w, result)
    if result.error:
        w.heading("Error")
        w.wrap(result.error)
    _bad_runs(w, result)
    if result.nonfinite is not None:
        w.heading("Non-finite values")
        w.wrap(f"{nonfinite_sentence(result.nonfinite)}; {NONFINITE_FIX}")
    if result.first_divergence is not None:
        _divergence(w, result)
    if result.nodes:
        _nodes(w, result)
    if result.nproc:
        w.heading(f"Ranks ({result.nproc} per run)")
        for line in rank_lines(result):
            w.wrap(line, indent="    ", first="  - ")
    if result.causes:
        _causes(w, result)
    elif result.first_divergence is not None:
        w.heading("Why")
        w.wrap("No cause was identified: no knob removed the divergence.")
    if result.latent_sources:
        _latent(w, result)
    if listed_escapes(result):
        _escapes(w, listed_escapes(result))
    if result.cuda_ops is not None:
        _cuda_ops(w, result.cuda_ops)
    _report_line(w, report_path)
    return w.text()


def _nodes(w: _Writer, result: DeterminismResult) -> None:
    """``--across-nodes``: where each run ran and, when they part, how the nodes differ."""
    w.heading("Nodes (--across-nodes)")
    w.fields([(f"run {n.get('run')}", one_line(n.get("node"))) for n in result.nodes])
    if result.environment_changes:
        w.wrap("The nodes' environments differ in:")
        w.fields([(one_line(c.get("key")), f"{one_line(c.get('a'))} -> {one_line(c.get('b'))}")
                  for c in result.environment_changes])
    elif result.verdict == "nondeterministic":
        w.wrap("The nodes' recorded environments are the same.")


CUDA_CATEGORY = {"made_deterministic": "made deterministic by use_deterministic_algorithms(True)",
                 "raises": "raises under use_deterministic_algorithms(True)"}


def _module_label(module: Optional[str]) -> str:
    return "(model)" if module == "" else "(outside the model)" if module is None else module


def _cuda_ops(w: _Writer, scan: CudaOpsScan) -> None:
    """The ops of the scanned step that PyTorch documents as nondeterministic on CUDA."""
    w.heading(f"Ops nondeterministic on CUDA (one step scanned on {one_line(scan.device)}, "
              f"torch {one_line(scan.torch)})")
    if scan.error:
        w.wrap(f"The scan could not run: {scan.error}")
        return
    if not scan.ops:
        w.wrap("None: no op of this step is documented as nondeterministic on CUDA.")
    for op in scan.ops:
        where = ", ".join(_module_label(m) for m in op.modules)
        w.wrap(f"{op.op} ({'/'.join(op.passes)}) in {where}", indent="    ", first="  - ")
        state = CUDA_CATEGORY.get(op.category, op.category)
        if op.confirmed is not None:
            state += "; confirmed on the GPU" if op.confirmed else "; not reported on the GPU"
        w.wrap(f"{state}. {op.doc}", indent="    ")
    if scan.cublas_workspace_required:
        w.wrap("With deterministic algorithms on, this torch also needs "
               "CUBLAS_WORKSPACE_CONFIG=:4096:8 (the step uses cuBLAS).")


# --------------------------------------------------------------------------- init


def _scheme_table(w: _Writer, result: InitResult) -> None:
    w.blank()
    name_width = min(max(max(len(one_line(s.name)) for s in result.schemes), 6), 28,
                     max(w.width - 73, 10))
    header = (f"  {'scheme'.ljust(name_width)}  {'verdict':<9}  {'findings':>8}  "
              f"{'loss':>10}  {'± (seeds)':<10}  {'act/grad':>11}")
    w.add(w.s(header, "dim"))
    for scheme in ordered_schemes(result):
        verdict = "error" if scheme.error else scheme.verdict
        mark = "* " if scheme.name == result.recommended else "  "
        line = (f"{mark}{shorten(one_line(scheme.name), name_width).ljust(name_width)}  "
                f"{w.s(verdict.ljust(9), 'green' if verdict == 'healthy' else 'red')}  "
                f"{len(scheme.findings):>8}  {fmt_loss(seed_loss(scheme)[0]):>10}  "
                f"{fmt_spread(scheme):<10}  {fmt_depth(scheme):>11}")
        if scheme.name == result.recommended:
            line += "  recommended"
        w.add(line.rstrip())
    w.wrap("loss: after the steps, the median over init seeds where more than one ran; "
           "act/grad: how the output std and the output-gradient norm change from the first "
           "weight layer to the last (fitted; 1 keeps the scale).", indent="  ")
    for scheme in (s for s in result.schemes if s.error):
        w.wrap(f"{scheme.name}: {scheme.error}", indent="    ", first="  ! ")


def _default_findings(w: _Writer, findings: list[Any]) -> None:
    w.heading("Findings for the model's own init")
    for finding in findings:
        head = finding_title(finding.kind)
        if finding.layer:
            head += f" at {one_line(finding.layer)}"
        w.wrap(head + finding_numbers(finding), indent="    ", first="  - ")
        if finding.message:
            w.wrap(finding.message, indent="    ")
        if finding_advice(finding.kind):
            w.wrap("What to do: " + finding_advice(finding.kind), indent="    ")


def init_summary(result: InitResult, report_path: Optional[str] = None, *,
                 color: bool = False, width: Optional[int] = None) -> str:
    """A compact table of the schemes (verdict, findings, loss over seeds, depth trends), the
    recommendation with its code, and the default init's findings with what to do about each."""
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
        _scheme_table(w, result)
    w.heading("Recommendation")
    if result.recommended:
        w.wrap(f"Use {result.recommended}."
               + (f" {result.recommendation_reason}" if result.recommendation_reason else ""))
        if result.recommendation_code:
            w.code(result.recommendation_code)
    else:
        w.wrap(result.recommendation_reason or "No scheme could be recommended.")
    if default is not None and default.findings:
        _default_findings(w, default.findings)
    _report_line(w, report_path)
    return w.text()


# --------------------------------------------------------------------------- resume


def resume_summary(result: ResumeResult, report_path: Optional[str] = None, *,
                   color: bool = False, width: Optional[int] = None) -> str:
    """Verdict; where the resumed run parts from the uninterrupted one; what differs right
    after the load; the proven causes with their evidence and the fix as code."""
    w = _Writer(width, color)
    status, title = resume_headline(result)
    _verdict(w, "resume", status, title)
    w.wrap(resume_sentence(result))
    facts = (f"{result.steps} steps, checkpoint after step {result.at - 1} (K={result.at}), "
             f"seed {result.seed}, device {one_line(result.device)}")
    if result.epoch_length:
        facts += f", {result.epoch_length} batches per epoch"
    if result.target:
        facts += f", target {one_line(result.target)}"
    w.wrap(facts)
    if result.error:
        w.heading("Error")
        w.wrap(result.error)
    div = result.first_divergence
    if div is not None:
        w.heading("Where the resumed run parts")
        pairs = [("step", str(div.step)),
                 ("stage", f"{div.stage} -- {RESUME_STAGE_MEANING.get(div.stage, div.stage)}")]
        pairs += [(k, v) for k, v in (("module", div.module), ("tensor", div.tensor)) if v]
        w.fields(pairs)
    if result.uninterrupted is not None:
        u = result.uninterrupted
        w.heading("Uninterrupted runs differ")
        w.wrap(f"at {'the start' if u.step is None else f'step {u.step}'}, stage {u.stage}"
               + (f" ({u.tensor})" if u.tensor else ""))
    if result.state_differences:
        w.heading("Different right after the load")
        for d in result.state_differences[:8]:
            w.wrap(d.piece + (f" {one_line(d.name)}" if d.name else ""), indent="    ", first="  - ")
        if len(result.state_differences) > 8:
            w.wrap(f"... and {len(result.state_differences) - 8} more", indent="    ")
    _resume_causes(w, result)
    notes = resume_notes(result)
    if notes:
        w.heading("Notes")
        for note in notes:
            w.wrap(note, indent="    ", first="  - ")
    _report_line(w, report_path)
    return w.text()


def _resume_causes(w: _Writer, result: ResumeResult) -> None:
    if not result.causes:
        return
    w.heading("Why")
    for n, cause in enumerate(result.causes, 1):
        state = "confirmed" if cause.confirmed else "not confirmed"
        w.add(f"  {n}. {w.s(resume_source_title(cause.source), 'bold')}  "
              f"[{one_line(cause.source)}, {w.s(state, 'green' if cause.confirmed else 'yellow')}]")
        _body(w, cause.evidence, cause.where, cause.fix)
        w.blank()


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
        title = textwrap.wrap(one_line(check.name), width=max(w.width - len(indent), 20),
                              break_on_hyphens=False) or [""]
        w.add(f"  {badge}  {audit}  {title[0]}".rstrip())
        w.lines.extend(indent + more for more in title[1:])
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


# --------------------------------------------------------------------------- variance, compare


def _run_problems(w: _Writer, runs: list[Any]) -> None:
    bad = [r for r in runs if r.status != Status.OK]
    if not bad:
        return
    w.heading(f"{len(bad)} run{'s' if len(bad) != 1 else ''} left out of the statistics")
    for r in bad[:8]:
        at = f" (at {one_line(r.where)})" if r.where else ""
        w.wrap(f"{r.group} seed {r.seed}: {r.status}: {one_line(r.message)}{at}", indent="    ",
               first="  - ")
    if len(bad) > 8:
        w.add(f"  ... and {len(bad) - 8} more (see the JSON report)")


def _source_table(w: _Writer, mv: MetricVariance) -> None:
    header = (f"  {'source':<8}  {'n':>3}  {'mean':>10}  {'std':>9}  {'95% CI of std':>21}  "
              f"{'IQR':>9}  {'share':>6}")
    w.add(w.s(header, "dim"))
    for name, st in mv.sources.items():
        ci = (f"[{fmt_num(st.std_ci[0])}, {fmt_num(st.std_ci[1])}]"
              if st.std_ci and st.std_ci[0] is not None else "n/a")
        w.add(f"  {name:<8}  {len(st.values):>3}  {fmt_loss(st.mean):>10}  {fmt_num(st.std):>9}  "
              f"{ci:>21}  {fmt_num(st.iqr):>9}  {fmt_percent(st.share):>6}")


def variance_summary(result: VarianceResult, report_path: Optional[str] = None, *, color: bool = False,
                     width: Optional[int] = None) -> str:
    """Per metric a table of the sources (mean, std with its CI, IQR, share of the all-sources
    variance) and the recommendation; how each seed is routed; runs left out."""
    w = _Writer(width, color)
    status, title = variance_headline(result)
    _verdict(w, "variance", status, title)
    w.wrap(f"{result.seeds} seeds per source, {result.steps} steps, seed {result.seed}, device "
           f"{one_line(result.device)}, target {one_line(result.target)}")
    if result.error:
        w.heading("Error")
        w.wrap(result.error)
    for name, mv in result.metrics.items():
        w.heading(f"{one_line(name)} ({direction_words(mv.direction)})")
        _source_table(w, mv)
        w.blank()
        w.wrap(variance_sentence(result, name))
    w.heading("How each seed is routed")
    for r in result.routing:
        mark = "" if r.separable else w.s(" (cannot be separated)", "red")
        w.wrap(f"{r.source}: {one_line(r.how)}{mark}", indent="    ", first="  ")
        if r.note:
            w.wrap(r.note, indent="    ")
    _run_problems(w, result.runs)
    _report_line(w, report_path)
    return w.text()


# --------------------------------------------------------------------------- diff


def _side_line(label: str, side: DiffSide) -> str:
    kind = {"reference": " (reference file)", "script": " (script mode)"}.get(side.mode, "")
    return f"{label}: {one_line(side.target or BUILTIN_LABEL)}{kind}"


def diff_summary(result: DiffResult, report_path: Optional[str] = None, *,
                 color: bool = False, width: Optional[int] = None) -> str:
    """Verdict; where the sides part (step, stage, module by side b's name with side a's,
    tensor, max |diff|); how much (loss curves, drift); renamed and unmatched modules;
    environment changes; the report path."""
    w = _Writer(width, color)
    status, title = diff_headline(result)
    _verdict(w, "diff", status, title)
    w.wrap(diff_sentence(result))
    w.wrap(_side_line("a", result.a), indent="    ", first="  ")
    w.wrap(_side_line("b", result.b), indent="    ", first="  ")
    w.wrap(f"{result.steps} steps, seed {result.seed}, device {one_line(result.device)}")
    if result.error:
        w.heading("Error")
        w.wrap(result.error)
    d = result.first_difference
    if d is not None:
        w.heading("Where the sides part")
        pairs = [("step", "before the first step" if d.step is None else str(d.step)),
                 ("stage", f"{d.stage} -- {DIFF_STAGE_MEANING.get(d.stage, d.stage)}")]
        if d.module is not None:
            named = d.module or "(the model)"
            pairs.append(("module", named + (f"  (a: {d.module_a})" if d.module_a not in (None, d.module) else "")))
        if d.tensor:
            pairs.append(("tensor", d.tensor + (f"  (a: {d.tensor_a})" if d.tensor_a not in (None, d.tensor) else "")))
        pairs.append(("max |diff|", fmt_num(d.max_abs_diff)))
        w.fields(pairs)
    if result.loss.a or result.loss.b:
        w.heading("How much")
        pairs = [("loss a", _curve(result.loss.a)), ("loss b", _curve(result.loss.b)),
                 ("max rel diff", fmt_num(result.loss.max_rel_diff)
                  + (f" at step {result.loss.step_of_max}" if result.loss.step_of_max is not None else ""))]
        if result.drift in DRIFT_WORDS:
            pairs.append(("drift", f"{result.drift}: the difference {DRIFT_WORDS[result.drift]}"))
        last = next((g for g in reversed(result.growth) if g.rel_l2 is not None), None)
        if last is not None:
            pairs.append(("parameters", f"relative L2 distance {fmt_num(last.rel_l2)} after step {last.step}"))
        w.fields(pairs)
    _diff_modules(w, result)
    if result.environment_changes:
        w.heading("Environment changes" + (" (the likely reason: the code is the same)"
                                           if result.likely_reason == "environment" else ""))
        w.fields([(c.key, f"{one_line(c.a)} -> {one_line(c.b)}") for c in result.environment_changes])
    _report_line(w, report_path)
    return w.text()


def compare_summary(result: CompareResult, report_path: Optional[str] = None, *, color: bool = False,
                    width: Optional[int] = None) -> str:
    """Both variants, the paired difference with its CI and p-value, the probability of
    improvement, the effect in seed-std units and the recommendation."""
    w = _Writer(width, color)
    status, title = compare_headline(result)
    _verdict(w, "compare", status, title)
    w.wrap(f"{result.metric} ({direction_words(result.direction)}), {len(result.deltas)} of "
           f"{result.seeds} seeds paired, {result.steps} steps, device {one_line(result.device)}")
    if result.error:
        w.heading("Error")
        w.wrap(result.error)
    w.blank()
    w.fields([
        ("baseline (a)", f"{one_line(result.a.target)}: mean {fmt_loss(result.a.mean)}, "
                         f"std {fmt_num(result.a.std)}"),
        ("candidate (b)", f"{one_line(result.b.target)}: mean {fmt_loss(result.b.mean)}, "
                          f"std {fmt_num(result.b.std)}"),
        ("b - a", f"mean {fmt_num(result.mean_delta)}, {int(result.confidence * 100)}% CI "
                  f"[{fmt_num(result.ci[0])}, {fmt_num(result.ci[1])}] (BCa bootstrap)"),
        ("p-value", f"{fmt_num(result.p_value)} (paired sign-flip permutation test)"),
        ("P(improvement)", fmt_percent(result.prob_improvement)),
        ("effect", f"{fmt_num(result.effect_size)} seed std"),
        ("seeds for 80%", "n/a" if result.seeds_needed is None else str(result.seeds_needed)),
    ])
    w.blank()
    w.wrap(compare_sentence(result))
    _run_problems(w, result.runs)
    _report_line(w, report_path)
    return w.text()


def _curve(values: list[Optional[float]], limit: int = 6) -> str:
    shown = [fmt_loss(v) for v in values[:limit]]
    return ", ".join(shown) + (f", ... ({len(values)} steps)" if len(values) > limit else "")


def _diff_modules(w: _Writer, result: DiffResult) -> None:
    if result.renamed:
        w.heading(f"Renamed modules ({len(result.renamed)})")
        for r in result.renamed[:20]:
            w.wrap(f"{r.source or '(root)'} -> {r.to or '(root)'}", indent="      ", first="  - ")
        if len(result.renamed) > 20:
            w.wrap(f"... and {len(result.renamed) - 20} more (diff.json lists them all)")
    if result.replaced:
        w.heading("Modules whose type changed")
        for rep in result.replaced:
            w.wrap(f"{rep.b}: {rep.a_type} -> {rep.b_type}" + (f" (a: {rep.a})" if rep.a != rep.b else ""),
                   indent="      ", first="  - ")
    for side, names in (("a", result.unmatched.a), ("b", result.unmatched.b)):
        if names:
            w.heading(f"Only in side {side}")
            w.wrap(", ".join(n or "(root)" for n in names))


def record_summary(result: RecordResult, report_path: Optional[str] = None, *,
                   color: bool = False, width: Optional[int] = None) -> str:
    """What ``audit record`` did: the file and its size, or, in one line, why it refused."""
    w = _Writer(width, color)
    status, title = record_headline(result)
    if result.verdict != "recorded":
        w.add(f"{w.s('audit record', 'bold')}  {w.s('FAIL', 'fail')}  " + record_sentence(result))
        return w.text()
    _verdict(w, "record", status, title)
    w.wrap(record_sentence(result))
    if result.path:
        w.wrap(f"Compare later with: audit diff --against {strip_controls(result.path)}")
    return w.text()
