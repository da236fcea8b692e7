"""Self-contained HTML reports: Jinja2 templates (autoescaped) + inline SVG charts.

One file per report, no JavaScript, no external fonts, CSS or CDN: the page opens from a CI
artifact, an e-mail attachment or a file share exactly as it was written. Every user string
(module names, messages, evidence, fixes, paths, targets, environment values) goes through
Jinja2's autoescaping, and control characters are removed from every value the templates print.
The charts are the only markup passed through unescaped; :mod:`reports.charts` writes them and
escapes their text.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional
from urllib.parse import quote

import jinja2
from markupsafe import Markup, escape

from audit.probes.results import STAGES, DeterminismResult, GateResult, InitResult
from audit.probes.results.diff import DiffResult, RecordResult
from audit.probes.results.resume import ResumeResult
from audit.probes.results.variance import CompareResult, VarianceResult
from audit.reports.common import (
    ESCAPE_USE,
    listed_escapes,
    CELL_NOTES,
    DIFF_STAGE_MEANING,
    DIFF_TIMELINE_STAGES,
    DRIFT_WORDS,
    NONFINITE_FIX,
    SOURCE_MEANING,
    compare_headline,
    compare_sentence,
    direction_words,
    variance_headline,
    variance_sentence,
    RUN_STATUS_TITLES,
    steps_text,
    STAGE_MEANING,
    STAGE_TITLES,
    determinism_headline,
    determinism_sentence,
    diff_headline,
    diff_sentence,
    environment_reason,
    diff_timeline_rows,
    diverged,
    final_loss,
    fmt_spread,
    seed_loss,
    finding_advice,
    finding_title,
    fmt_loss,
    fmt_num,
    fmt_percent,
    fmt_seconds,
    init_headline,
    nonfinite_sentence,
    one_line,
    ordered_schemes,
    RESUME_STAGE_MEANING,
    RESUME_STAGES_SHOWN,
    resume_headline,
    resume_notes,
    resume_sentence,
    resume_source_title,
    record_headline,
    record_sentence,
    source_title,
    strip_controls,
    timeline_rows,
)
from audit.reports.files import write_atomic
from audit.reports.ranks import rank_timelines, replica_grid, replica_sentence
from audit.probes.results.records import Status

TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
#: Timelines longer than this collapse runs of identical rows into one.
TIMELINE_COLLAPSE_ROWS = 40


def _finalize(value: Any) -> Any:
    """Applied to every ``{{ expression }}`` before escaping: ``None`` prints as nothing and
    control characters never reach the page."""
    if value is None:
        return ""
    if isinstance(value, Markup):
        return value
    if isinstance(value, str):
        return strip_controls(value)
    return value


def _href(name: Any) -> str:
    """A relative link to a report file: percent-encoded, so a name can never become a
    ``javascript:`` or absolute URL."""
    return quote(strip_controls(name).replace("\\", "/"), safe="/._-~")


def _dotted(name: Any) -> Markup:
    """A dotted name (``encoder.layers.11.out_proj``) that may break after its dots."""
    parts = strip_controls(name).split(".")
    return Markup(".<wbr>").join(escape(part) for part in parts)


def _env_value(value: Any) -> str:
    if value is None:
        return "not set"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def _environment_rows(environment: dict[str, Any]) -> list[tuple[str, str]]:
    """Environment as ``(key, value)`` rows; nested tables (e.g. flags) flattened with
    ``group › key``."""
    rows: list[tuple[str, str]] = []
    for key, value in (environment or {}).items():
        if isinstance(value, dict) and value:
            rows.extend((f"{key} › {k}", _env_value(v)) for k, v in value.items())
        else:
            rows.append((str(key), _env_value(value)))
    return rows


_ENV: Optional[jinja2.Environment] = None


def environment() -> jinja2.Environment:
    """The Jinja2 environment of the report templates (autoescape on for every template)."""
    global _ENV
    if _ENV is None:
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            finalize=_finalize,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        env.filters.update(
            num=fmt_num, loss=fmt_loss, pct=fmt_percent, dotted=_dotted, secs=fmt_seconds, href=_href, oneline=one_line,
            source_title=source_title, finding_title=finding_title,
            finding_advice=finding_advice, env_value=_env_value,
            resume_source_title=resume_source_title,
        )
        env.globals.update(STAGES=STAGES, STAGE_TITLES=STAGE_TITLES,
                           STAGE_MEANING=STAGE_MEANING, RUN_STATUS_TITLES=RUN_STATUS_TITLES,
                           NONFINITE_FIX=NONFINITE_FIX, nonfinite_sentence=nonfinite_sentence)
        _ENV = env
    return _ENV


def render(template: str, **context: Any) -> str:
    """Render one of the report templates with ``context``."""
    return environment().get_template(template).render(**context)


# --------------------------------------------------------------------------- determinism


def _collapse(rows: list[dict[str, Any]], limit: int = TIMELINE_COLLAPSE_ROWS) -> list[dict[str, Any]]:
    """Long timelines: runs of three or more identical step rows become one ranged row."""
    if len(rows) <= limit:
        return rows
    out: list[dict[str, Any]] = []
    for row in rows:
        prev = out[-1] if out else None
        if (prev is not None and row["step"] is not None and prev["step"] is not None
                and prev["cells"] == row["cells"] and not row.get("first")
                and not prev.get("first")):
            prev.setdefault("last", prev["step"])
            prev["last"] = row["step"]
            prev["count"] = prev.get("count", 1) + 1
            continue
        out.append(dict(row))
    final = []
    for row in out:
        if row.get("count", 1) >= 3:
            row["label"] = f"steps {row['step']}–{row['last']}"
            final.append(row)
        elif row.get("count", 1) == 2:
            final.append({**row, "count": 1, "last": None})
            final.append({**row, "step": row["last"], "label": f"step {row['last']}",
                          "count": 1, "last": None})
        else:
            final.append(row)
    return final


def _timeline(result: DeterminismResult) -> list[dict[str, Any]]:
    rows = timeline_rows(result)
    div = result.first_divergence
    for row in rows:
        row["first_col"] = None
        if div is None:
            continue
        if div.stage == "init" and row["step"] is None:
            row["first_col"] = 0
        elif div.stage != "init" and row["step"] == div.step and div.stage in STAGES:
            row["first_col"] = STAGES.index(div.stage)
        row["first"] = row["first_col"] is not None
    return _collapse(rows)


def determinism_html(result: DeterminismResult, *, charts: bool = True) -> str:
    """The determinism report page. ``charts=False`` leaves the growth chart out (faster)."""
    status, title = determinism_headline(result)
    div = result.first_divergence
    growth_svg = ""
    if charts:
        from audit.reports import charts as _charts  # matplotlib only when drawing

        growth_svg = _charts.growth_chart(
            result.growth, div.step if div is not None and div.stage != "init" else None)
    last = next((g for g in reversed(result.growth) if g.max_abs_diff is not None), None)
    return render(
        "determinism.html", r=result, status=status, title=title,
        sentence=determinism_sentence(result), timeline=_timeline(result),
        growth_svg=Markup(growth_svg), charts=charts, last_growth=last,
        environment_rows=_environment_rows(result.environment),
        detail_rows=[(str(k), _env_value(v)) for k, v in (result.detail or {}).items()],
        steps_made=steps_text(result), CELL_NOTES=CELL_NOTES,
        notes_used=sorted({n for row in timeline_rows(result) for n in row["notes"] if n}),
        bad_runs=[r for r in result.run_info if r.status != Status.OK],
        ranks=_ranks(result), escapes=listed_escapes(result), ESCAPE_USE=ESCAPE_USE,
    )


def _ranks(result: DeterminismResult) -> dict[str, Any]:
    """The distributed section: ranks side by side (``{}`` for single-process runs)."""
    if not result.nproc:
        return {}
    return {"timelines": rank_timelines(result), "replicas": replica_grid(result),
            "sentence": replica_sentence(result),
            "notes": [(k.replace("_", " "), result.detail[k]) for k in ("sharding", "rank_rng")
                      if (result.detail or {}).get(k)]}


# --------------------------------------------------------------------------- init


def init_html(result: InitResult, *, charts: bool = True) -> str:
    """The init report page. ``charts=False`` leaves the charts out (faster)."""
    status, title = init_headline(result)
    schemes = ordered_schemes(result)
    default = result.scheme("default")
    recommended = result.scheme(result.recommended) if result.recommended else None
    chart_svgs: list[tuple[str, str, Markup]] = []
    if charts:
        from audit.reports import charts as _charts  # matplotlib only when drawing

        pair = [s for s in (default, recommended) if s is not None]
        pair = [s for i, s in enumerate(pair) if s not in pair[:i]]
        for heading, caption, svg in (
            ("Gradient norm against depth",
             "Weight-gradient norm of each layer, input on the left. Flat lines are healthy; "
             "a line that falls towards the input means vanishing gradients, one that rises "
             "means exploding gradients. Log scale.",
             _charts.grad_norm_chart(schemes, result.recommended)),
            ("Activation std against depth",
             "Standard deviation of each layer's output. A healthy init keeps it roughly "
             "constant; a steady fall or rise compounds with depth. Log scale.",
             _charts.act_std_chart(schemes, result.recommended)),
            ("Dead and saturated units",
             "Share of ReLU units that output zero for the whole batch, and of tanh/sigmoid "
             "units stuck at their bounds, for the model's own init and the recommended one.",
             _charts.dead_saturated_chart(pair, result.recommended)),
            ("Loss during the first steps",
             f"Training loss over {result.steps} optimizer steps from each init, on the same "
             "batches.",
             _charts.loss_chart(schemes, result.recommended)),
        ):
            if svg:
                chart_svgs.append((heading, caption, Markup(svg)))
    flagged: dict[str, list[str]] = {}
    if default is not None:
        for finding in default.findings:
            if finding.layer:
                flagged.setdefault(finding.layer, []).append(finding_title(finding.kind))
    return render(
        "init.html", r=result, status=status, title=title, schemes=schemes, default=default,
        recommended=recommended, charts=chart_svgs, flagged=flagged,
        final_loss=final_loss, diverged=diverged, seed_loss=seed_loss, fmt_spread=fmt_spread,
        environment_rows=_environment_rows(result.environment),
        threshold_rows=[(str(k), _env_value(v)) for k, v in (result.thresholds or {}).items()],
    )


# --------------------------------------------------------------------------- resume


def _resume_timeline(result: ResumeResult) -> list[dict[str, Any]]:
    """Rows of the A-vs-C timeline around K: a cell per stage (``before`` for steps the
    resumed run did not make, ``na`` for ``state`` away from K), the first divergence marked."""
    div = result.first_divergence
    rows: list[dict[str, Any]] = []
    for entry in result.timeline:
        cells = []
        for stage in RESUME_STAGES_SHOWN:
            state = (entry.stages or {}).get(stage, "na")
            first = div is not None and div.step == entry.step and div.stage == stage
            cells.append({"stage": stage, "state": state, "first": first})
        rows.append({"step": entry.step, "cells": cells, "loss_a": entry.loss_a,
                     "loss_c": entry.loss_c, "resumed": entry.step == result.at})
    return rows


def resume_html(result: ResumeResult) -> str:
    """The resume report page: verdict, timeline of A vs C around K, causes and fixes."""
    status, title = resume_headline(result)
    return render(
        "resume.html", r=result, status=status, title=title, sentence=resume_sentence(result),
        timeline=_resume_timeline(result), stages=RESUME_STAGES_SHOWN,
        stage_meaning=RESUME_STAGE_MEANING,
        environment_rows=_environment_rows(result.environment),
        notes=resume_notes(result),
    )


def write_resume(result: ResumeResult, path: str) -> None:
    write_atomic(path, resume_html(result))


# --------------------------------------------------------------------------- the gate


def index_html(gate: GateResult) -> str:
    """The ``audit check`` index page: the gate's verdict, every check, and links to the
    reports in ``gate.reports``."""
    failed = [c for c in gate.checks if not c.passed and not c.skipped]
    skipped = [c for c in gate.checks if c.skipped]
    summaries = {name: ((sm.status, sm.title), sm.text) for name, sm in gate.summaries.items()}
    return render("index.html", gate=gate, failed=failed, skipped=skipped,
                  passed_count=len(gate.checks) - len(failed) - len(skipped),
                  status="pass" if not failed else "fail", summaries=summaries)


# --------------------------------------------------------------------------- files


def write_index(gate: GateResult, path: str) -> None:
    write_atomic(path, index_html(gate))


# --------------------------------------------------------------------------- variance, compare


def _variance_metric(result: VarianceResult, index: int, name: str, charts: bool) -> dict[str, Any]:
    mv = result.metrics[name]
    svg = ""
    if charts:
        from audit.reports import charts as _charts

        svg = _charts.strip_chart([(s, st.values) for s, st in mv.sources.items()], name,
                                  f"variance-{index}",
                                  f"{name} per seed, per source")
    return {"name": name, "direction": direction_words(mv.direction),
            "sources": list(mv.sources.items()), "dominant": result.dominant.get(name),
            "sentence": variance_sentence(result, name), "svg": Markup(svg)}


def variance_html(result: VarianceResult, *, charts: bool = True) -> str:
    """The variance report page: per metric a strip/box plot per source and the table."""
    status, title = variance_headline(result)
    return render("variance.html", r=result, status=status, title=title,
                  metrics=[_variance_metric(result, i, n, charts)
                           for i, n in enumerate(result.metrics)],
                  bad_runs=result.crashed, SOURCE_MEANING=SOURCE_MEANING,
                  environment_rows=_environment_rows(result.environment))


def compare_html(result: CompareResult, *, charts: bool = True) -> str:
    """The compare report page: both variants per seed, the paired differences with the CI
    of their mean, and the verdict and recommendation in words."""
    status, title = compare_headline(result)
    strip_svg = delta_svg = ""
    if charts:
        from audit.reports import charts as _charts

        strip_svg = _charts.strip_chart([("a: baseline", result.a.values),
                                         ("b: candidate", result.b.values)], result.metric,
                                        "variants", f"{result.metric} per seed, per variant")
        delta_svg = _charts.delta_chart(result.deltas, result.ci, result.metric)
    pairs = list(zip(result.paired_seeds, result.a.values, result.b.values, result.deltas))
    return render("compare.html", r=result, status=status,
                  title=title,
                  sentence=compare_sentence(result), strip_svg=Markup(strip_svg),
                  delta_svg=Markup(delta_svg), pairs=pairs, bad_runs=result.crashed,
                  environment_rows=_environment_rows(result.environment))


def write_variance(result: VarianceResult, path: str) -> None:
    write_atomic(path, variance_html(result))


def write_compare(result: CompareResult, path: str) -> None:
    write_atomic(path, compare_html(result))

# --------------------------------------------------------------------------- diff


def diff_html(result: DiffResult, *, charts: bool = True) -> str:
    """The diff report page: both sides, the first difference, the timeline with it marked,
    the loss curves overlaid (and the parameter growth), matched modules, environment."""
    status, title = diff_headline(result)
    d = result.first_difference
    loss_svg = growth_svg = ""
    if charts:
        from audit.reports import charts as _charts  # matplotlib only when drawing

        step = d.step if d is not None else None
        loss_svg = _charts.loss_pair_chart(result.loss.a, result.loss.b, step)
        growth_svg = _charts.growth_chart(result.growth, step)
    n = max(len(result.loss.a), len(result.loss.b))
    pad = lambda xs: list(xs) + [None] * (n - len(xs))  # noqa: E731
    return render(
        "diff.html", r=result, status=status, title=title, sentence=diff_sentence(result),
        reason=environment_reason(result),
        timeline=_collapse(diff_timeline_rows(result)), loss_svg=Markup(loss_svg),
        growth_svg=Markup(growth_svg), loss_rows=list(zip(pad(result.loss.a), pad(result.loss.b))),
        environment_rows=_environment_rows(result.b.environment), DIFF_STAGES=DIFF_TIMELINE_STAGES,
        STAGE_MEANING_DIFF=DIFF_STAGE_MEANING, DRIFT_WORDS=DRIFT_WORDS)


def record_html(result: RecordResult) -> str:
    """The ``audit record`` page: what was recorded, or why nothing was."""
    status, title = record_headline(result)
    return render("record.html", r=result, status=status, title=title,
                  sentence=record_sentence(result))
