"""The CI gate: checks drawn from the audits, the report files, baselines and ``audit check``.

**Checks.** Each audit's result becomes a list of :class:`probes.results.Check` -- the pass/fail
statements a CI job shows as JUnit testcases, summary rows and GitHub annotations:

* determinism: ``runs completed`` (no run crashed), ``runs agree`` (bit for bit),
  ``no unseeded generators`` and, when the runs part, one ``cause: SOURCE`` check per other
  cause source, with its evidence, fix and place.

  ``no unseeded generators`` fails for *every* generator the matched seed does not reach, even
  when the runs agreed: these steps may simply not have drawn from it yet (an augmentation at
  the next epoch, a validation split, a dropout mask in a later layer); it is a hazard with a
  place and a one-line fix. It is also the check for the ``unseeded_rng`` cause source: its
  message says whether seeding the generators was proven to remove the divergence.
* init: ``default init healthy`` (the target's own init), ``no vanishing gradients`` ... one per
  finding kind (always present, so a CI dashboard tracks each), and ``recommended scheme
  healthy``.

**Baselines** (``--baseline FILE``) accept what is known and fail only on regressions. The file
(schema ``audit.baseline/1``, JSON with sorted keys, two-space indent) holds one snapshot per
audit, the names of the checks that failed when it was recorded, and the per-metric tolerances
(:data:`audit.config.DEFAULT_TOLERANCES`; ``[tool.audit.<audit>.tolerances]`` wins over the
file, the file over the defaults). A check that also failed in the baseline is reported as
skipped ("accepted by the baseline"); a new failure, or a regression of a metric, fails. What
counts as a regression:

* determinism: the runs no longer agree; a stage differs that did not (``data``, ``forward``,
  ...); a new cause source; a new place that makes an unseeded generator (compared per kind and
  file, so edits that move lines do not count); the first divergence's max |diff| growing by
  more than ``max_abs_diff`` (a factor); runs that crash.
* init: the own init going from healthy to unhealthy; a new finding (kind and layer); a layer's
  gradient norm moving further than ``grad_norm`` decades away from the median layer's, its
  activation std further than ``act_std`` decades away from 1, its dead or saturated share
  rising by more than ``dead_fraction`` / ``saturated_fraction``, or turning non-finite; the
  recommended scheme no longer healthy.

``--update-baseline`` records the current state (and passes).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
from typing import Any, Callable, Optional

from audit.probes.results import Check, DeterminismResult, GateResult, InitResult, STAGES

from audit.cli import EXIT_FOUND, EXIT_OK, EXIT_USAGE, UsageError

BASELINE_SCHEMA = "audit.baseline/1"
DEFAULT_BASELINE = "audit-baseline.json"
#: The check added per audit when a baseline is in use.
REGRESSION_CHECK = "no regressions against the baseline"
#: Leave at least this much of GitHub's step-summary cap unused by us.
_SUMMARY_MARGIN = 16 * 1024
_MIN_SUMMARY = 2 * 1024

FINDING_CHECKS = (
    ("vanishing_gradients", "no vanishing gradients"),
    ("exploding_gradients", "no exploding gradients"),
    ("vanishing_activations", "no vanishing activations"),
    ("exploding_activations", "no exploding activations"),
    ("dead_units", "no dead units"),
    ("saturation", "no saturated units"),
    ("nonfinite", "no non-finite values"),
)


# --------------------------------------------------------------------------- checks


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


_AT = re.compile(r"\(at ([^()]+:\d+)\)\s*$")


def checks_for_determinism(result: DeterminismResult) -> list:
    """The determinism audit as checks: runs completed, runs agree, no unseeded generators,
    and one ``cause: SOURCE`` per cause source other than ``unseeded_rng``."""
    from audit.reports.common import determinism_sentence, source_title

    checks = []
    bad = [r for r in result.run_info
           if r.status in ("crashed", "killed", "exited", "timed_out", "interrupted")]
    if result.error or bad:
        first = bad[0] if bad else None
        where = None
        if first is not None:
            match = _AT.search(first.message or "")
            where = match.group(1) if match else None
        message = result.error or (
            f"run {first.index} {first.status} after {first.steps_completed} of "
            f"{result.steps} steps: {first.message}")
        checks.append(Check("determinism", "runs completed", False,
                            message + "; the comparison covers only the steps before it",
                            "fix the error in the training code; run `audit determinism "
                            "--debug` to see the run's output", where))
    else:
        short = [r for r in result.run_info if r.status == "ended_early"]
        note = (f"; {_plural(len(short), 'run')} ended before {result.steps} steps "
                "(the data ran out)") if short else ""
        checks.append(Check("determinism", "runs completed", True,
                            f"{_plural(result.runs, 'run')} of {_plural(result.steps, 'step')}"
                            + note))

    fix, where = "", None
    if result.causes:
        top = next((c for c in result.causes if c.confirmed),
                   next((c for c in result.causes if c.source != "unknown"), result.causes[0]))
        fix, where = top.fix, top.where
    if result.verdict == "deterministic" and result.error and not result.first_divergence:
        checks.append(Check("determinism", "runs agree", False,
                            "undecided: a run crashed before the runs could be compared",
                            skipped=True))
    else:
        checks.append(Check("determinism", "runs agree", result.verdict == "deterministic",
                            determinism_sentence(result),
                            fix if result.verdict != "deterministic" else "",
                            where if result.verdict != "deterministic" else None))

    checks.append(_generator_check(result))
    checks.append(_nonfinite_check(result))

    by_source: dict = {}
    for cause in result.causes:
        if cause.source != "unseeded_rng":
            by_source.setdefault(cause.source, []).append(cause)
    for source, causes in by_source.items():
        first = causes[0]
        state = "confirmed" if first.confirmed else "not confirmed"
        evidence = "; ".join(c.evidence for c in causes if c.evidence)
        checks.append(Check("determinism", f"cause: {source}", False,
                            f"{source_title(source)} ({state}): {evidence}",
                            first.fix, next((c.where for c in causes if c.where), None)))
    return checks


def _nonfinite_check(result: DeterminismResult) -> Check:
    """``finite loss and gradients``: whatever the verdict, a NaN or inf is a failed training."""
    from audit.reports.common import NONFINITE_FIX, nonfinite_sentence

    if result.nonfinite is None:
        return Check("determinism", "finite loss and gradients", True,
                     "every loss and gradient of every run was finite")
    return Check("determinism", "finite loss and gradients", False,
                 nonfinite_sentence(result.nonfinite), NONFINITE_FIX)


def _generator_check(result: DeterminismResult) -> Check:
    from audit.probes.determinism.attribute import escape_fix

    escapes = list(result.rng_escapes)
    rng_causes = [c for c in result.causes if c.source == "unseeded_rng"]
    if not escapes and not rng_causes:
        return Check("determinism", "no unseeded generators", True,
                     "every random generator the training used follows the seed")
    confirmed = any(c.confirmed for c in rng_causes)
    places = [f"{e.kind} at {e.where or 'an unknown place'}"
              + (f" ({e.detail})" if e.detail else "") for e in escapes]
    if escapes:
        message = (f"{_plural(len(escapes), 'generator')} the matched seed does not reach: "
                   + "; ".join(places) + ". ")
    else:
        message = "; ".join(c.evidence for c in rng_causes) + ". "
    if confirmed:
        message += "Seeding them was proven to remove the divergence between the runs."
    elif result.verdict == "nondeterministic" and not any(
            t.knob == "seed_escapes" for t in result.knob_trials):
        message += ("Attribution did not run, so whether they cause the divergence is not "
                    "proven; seeding them is the first thing to try.")
    elif result.verdict == "nondeterministic":
        message += "Seeding them alone did not remove the divergence; fix them anyway."
    else:
        message += ("These steps agreed, but whatever draws from them later (another epoch, "
                    "a validation split, a later layer) will differ between runs.")
    if escapes:
        fixes = []
        for e in escapes:
            line = escape_fix(e.kind)
            if line not in fixes:
                fixes.append(line)
        fix = "\n".join(fixes)
        where = next((e.where for e in escapes if e.where), None)
    else:
        fix = rng_causes[0].fix
        where = next((c.where for c in rng_causes if c.where), None)
    return Check("determinism", "no unseeded generators", False, message, fix, where)


def checks_for_init(result: InitResult) -> list:
    """The init audit as checks: default init healthy, one per finding kind of the default
    scheme (with the layers and what to do), recommended scheme healthy."""
    from audit.reports.common import finding_advice, finding_numbers, finding_title, init_headline

    checks = []
    default = result.scheme("default")
    findings = list(default.findings) if default is not None else []
    code = result.recommendation_code or ""
    use = f"Use {result.recommended}:" if result.recommended else ""
    _, headline = init_headline(result)
    if result.passed:
        message = headline
    else:
        parts = [headline]
        if result.error:
            parts.append(result.error)
        elif default is not None and default.error:
            parts.append(f"the model's own init failed to train: {default.error}")
        if findings:
            kinds = sorted({finding_title(f.kind).lower() for f in findings})
            parts.append(f"{_plural(len(findings), 'finding')}: {', '.join(kinds)}")
        if result.recommended and result.recommended != "default":
            parts.append(f"recommended instead: {result.recommended}")
        message = "; ".join(parts)
    better = bool(code and result.recommended and result.recommended != "default")
    fix = ""
    if not result.passed:
        if better:
            fix = code
        elif findings:
            fix = "\n".join(dict.fromkeys(f"# {finding_advice(f.kind)}" for f in findings
                                           if finding_advice(f.kind)))
    checks.append(Check("init", "default init healthy", result.passed, message, fix))

    for kind, name in FINDING_CHECKS:
        found = [f for f in findings if f.kind == kind]
        if not found:
            checks.append(Check("init", name, True,
                                f"no {finding_title(kind).lower()} with the model's own init"))
            continue
        layers = []
        for f in found:
            text = (f.layer or "the model") + finding_numbers(f)
            if f.message:
                text += f": {f.message.strip().rstrip('.')}"
            layers.append(text)
        message = (f"{finding_title(kind)} with the model's own init at "
                   + "; ".join(layers) + ". What to do: " + finding_advice(kind))
        fix = f"# {use}\n{code}" if better else ""
        checks.append(Check("init", name, False, message, fix.strip()))

    best = result.scheme(result.recommended) if result.recommended else None
    if best is None:
        checks.append(Check("init", "recommended scheme healthy", False,
                            result.recommendation_reason or "no scheme could be recommended: "
                            "every scheme failed"))
    else:
        ok = best.verdict == "healthy" and best.error is None
        detail = "healthy" if ok else (
            f"unhealthy ({_plural(len(best.findings), 'finding')}"
            + (f"; {best.error}" if best.error else "") + ")")
        message = f"the recommended scheme {best.name} is {detail}"
        if result.recommendation_reason:
            message += f". {result.recommendation_reason}"
        checks.append(Check("init", "recommended scheme healthy", ok, message,
                            "" if ok else "none of the schemes tried is healthy: look at the "
                            "findings of each in the report (normalization layers, residual "
                            "connections, the nonlinearity, the learning rate)"))
    return checks


def checks_for(audit: str, result) -> list:
    if audit == "determinism":
        return checks_for_determinism(result)
    if audit == "init":
        return checks_for_init(result)
    raise ValueError(f"unknown audit {audit!r}")


# --------------------------------------------------------------------------- one-line verdicts


def verdict_line(audit: str, result, report_path: Optional[str]) -> str:
    """One line: the audit, PASS/FAIL/ERROR, what was found, and the report path."""
    from audit.reports.common import determinism_headline, init_headline, one_line, stage_title

    if audit == "determinism":
        status, title = determinism_headline(result)
        text = title
        div = result.first_divergence
        if div is not None:
            at = "before the first step" if div.step is None or div.stage == "init" else f"at step {div.step}"
            text += f": the runs part {at} in the {stage_title(div.stage)}"
            if div.module:
                text += f" of {one_line(div.module)}"
            if result.causes:
                text += f"; cause: {result.causes[0].source}"
                if result.causes[0].where:
                    text += f" at {one_line(result.causes[0].where)}"
        elif result.rng_escapes:
            text += f", but {_plural(len(result.rng_escapes), 'unseeded generator')} found"
        text += f" ({result.runs} runs x {result.steps} steps)"
    elif audit == "init":
        status, title = init_headline(result)
        default = result.scheme("default")
        text = title
        if default is not None and default.findings:
            kinds = sorted({f.kind for f in default.findings})
            text += f" ({_plural(len(default.findings), 'finding')}: {', '.join(kinds)})"
        if result.recommended:
            text += f"; recommended: {result.recommended}"
    else:
        raise ValueError(f"unknown audit {audit!r}")
    state = getattr(result, "_audit_baseline", None)
    if state is not None and status != "error":
        status = "fail" if state["regressions"] else "pass"
        text += (f"; {_plural(len(state['regressions']), 'regression')} against the baseline"
                 if state["regressions"] else "; no regressions against the baseline")
    line = f"audit {audit}: {status.upper()} {text}"
    if report_path:
        line += f" -- report: {report_path}"
    return one_line(line)


def gate_verdict_line(gate: GateResult, report_path: Optional[str]) -> str:
    """The one line ``audit check --quiet`` prints."""
    failed = [c for c in gate.checks if not c.passed and not c.skipped]
    if failed:
        names = ", ".join(f"{c.audit}: {c.name}" for c in failed[:4])
        if len(failed) > 4:
            names += ", ..."
        line = f"audit check: FAIL {len(failed)} of {len(gate.checks)} checks failed ({names})"
    else:
        line = f"audit check: PASS all {len(gate.checks)} checks passed"
        skipped = sum(1 for c in gate.checks if c.skipped)
        if skipped:
            line += f" ({skipped} accepted or skipped)"
    if report_path:
        line += f" -- report: {report_path}"
    return " ".join(line.split())


# --------------------------------------------------------------------------- baselines


def _round(value: Any) -> Optional[float]:
    from audit.reports.common import finite

    value = finite(value)
    return None if value is None else float(f"{value:.4g}")


def _where_file(where: Optional[str]) -> Optional[str]:
    from audit.reports.common import split_where

    return split_where(where)[0] if where else None


def _differing_stages(result: DeterminismResult) -> list:
    stages = set()
    for row in result.timeline:
        for stage, state in (row.stages or {}).items():
            if state == "differ":
                stages.add(stage)
    if result.first_divergence is not None:
        stages.add(result.first_divergence.stage)
    return [s for s in STAGES if s in stages]


def snapshot(audit: str, result, checks: Optional[list] = None) -> dict:
    """What a baseline keeps of a result (plain, JSON-able, numbers to 4 significant digits)."""
    checks = checks_for(audit, result) if checks is None else checks
    failing = sorted({c.name for c in checks if not c.passed and not c.skipped})
    if audit == "determinism":
        div = result.first_divergence
        return {
            "settings": {"runs": result.runs, "steps": result.steps, "seed": result.seed,
                         "device": result.device, "target": result.target},
            "verdict": result.verdict,
            "crashed": bool(result.error),
            "nondeterministic_stages": _differing_stages(result),
            "first_divergence": None if div is None else {
                "step": div.step, "stage": div.stage, "module": div.module,
                "max_abs_diff": _round(div.max_abs_diff)},
            "cause_sources": sorted({c.source for c in result.causes}),
            "rng_escapes": sorted(({"kind": e.kind, "where": e.where} for e in result.rng_escapes),
                                  key=lambda e: (e["kind"], e["where"] or "")),
            "failing_checks": failing,
        }
    default = result.scheme("default")
    best = result.scheme(result.recommended) if result.recommended else None
    layers = {}
    for layer in (default.layers if default is not None else []):
        layers[layer.name] = {
            "grad_norm": _round(layer.grad_norm), "act_std": _round(layer.act_std),
            "dead_fraction": _round(layer.dead_fraction),
            "saturated_fraction": _round(layer.saturated_fraction),
            "nonfinite": bool(layer.nonfinite)}
    return {
        "settings": {"steps": result.steps, "seed": result.seed, "device": result.device,
                     "target": result.target, "schemes": [s.name for s in result.schemes]},
        "verdict": result.verdict,
        "error": result.error,
        "recommended": result.recommended,
        "recommended_healthy": bool(best is not None and best.verdict == "healthy" and best.error is None),
        "findings": sorted(({"kind": f.kind, "layer": f.layer} for f in
                            (default.findings if default is not None else [])),
                           key=lambda f: (f["kind"], f["layer"] or "")),
        "layers": layers,
        "failing_checks": failing,
    }


def _decades_from(value: Optional[float], ref: Optional[float]) -> Optional[float]:
    if value is None or ref is None or value <= 0 or ref <= 0:
        return None
    return abs(math.log10(value / ref))


def _median(values: list) -> Optional[float]:
    values = sorted(v for v in values if v is not None and v > 0)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else math.sqrt(values[mid - 1] * values[mid])


def regressions(audit: str, base: dict, now: dict, tolerances: dict) -> list:
    """``(text, where)`` pairs: how ``now`` (a snapshot) is worse than ``base``."""
    out = []
    if audit == "determinism":
        if now.get("crashed") and not base.get("crashed"):
            out.append(("a run crashed; in the baseline every run completed", None))
        base_stages = set(base.get("nondeterministic_stages") or [])
        new_stages = [s for s in now.get("nondeterministic_stages") or [] if s not in base_stages]
        div = now.get("first_divergence")
        if base.get("verdict") == "deterministic" and now.get("verdict") != "deterministic":
            text = "the runs no longer agree"
            if div:
                at = "before the first step" if div.get("step") is None else f"at step {div['step']}"
                text += f": they part {at} in the {div.get('stage')} stage"
                if div.get("module"):
                    text += f" of {div['module']}"
            if new_stages:
                text += f" (stages that now differ: {', '.join(new_stages)})"
            out.append((text, None))
        else:
            for stage in new_stages:
                out.append((f"newly nondeterministic stage: {stage}", None))
        bdiv = base.get("first_divergence")
        factor = tolerances.get("max_abs_diff")
        if div and bdiv and factor is not None:
            a, b = div.get("max_abs_diff"), bdiv.get("max_abs_diff")
            if a is not None and b is not None and b > 0 and a > b * factor:
                out.append((f"the divergence grew: max |diff| {a:.3g} against {b:.3g} in the "
                            f"baseline (more than x{factor:g})", None))
        for source in now.get("cause_sources") or []:
            if source not in (base.get("cause_sources") or []):
                out.append((f"new cause of nondeterminism: {source}", None))
        base_places: dict = {}
        for e in base.get("rng_escapes") or []:
            base_places.setdefault((e["kind"], _where_file(e["where"])), set()).add(e["where"])
        now_places: dict = {}
        for e in now.get("rng_escapes") or []:
            now_places.setdefault((e["kind"], _where_file(e["where"])), []).append(e["where"])
        for key, wheres in now_places.items():
            known = base_places.get(key, set())
            extra = len(wheres) - len(known)
            if extra <= 0:
                continue
            fresh = [w for w in wheres if w not in known] or wheres
            for where in fresh[:extra]:
                out.append((f"new unseeded generator: {key[0]} at {where or 'an unknown place'}", where))
        return out

    if now.get("error") and not base.get("error"):
        out.append((f"the init audit failed: {now['error']}", None))
    if base.get("verdict") == "healthy" and now.get("verdict") != "healthy":
        out.append(("the model's own init became unhealthy", None))
    known = {(f["kind"], f["layer"]) for f in base.get("findings") or []}
    for f in now.get("findings") or []:
        if (f["kind"], f["layer"]) not in known:
            out.append((f"new finding: {f['kind']} at {f['layer'] or 'the model'}", None))
    blayers, nlayers = base.get("layers") or {}, now.get("layers") or {}
    bmed = _median([v.get("grad_norm") for v in blayers.values()])
    nmed = _median([v.get("grad_norm") for v in nlayers.values()])
    for name, cur in nlayers.items():
        old = blayers.get(name)
        if old is None:
            continue
        tol = tolerances.get("grad_norm")
        if tol is not None and old.get("grad_norm") and old["grad_norm"] > 0:
            was = _decades_from(old.get("grad_norm"), bmed)
            g = cur.get("grad_norm")
            if g is None or g <= 0:
                out.append((f"{name}: the gradient vanished (norm {g if g is not None else 'missing'}, "
                            f"{old['grad_norm']:.3g} in the baseline)", None))
            else:
                now_dev = _decades_from(g, nmed)
                if was is not None and now_dev is not None and now_dev - was > tol:
                    out.append((f"{name}: gradient norm {g:.3g} is {now_dev:.1f} decades from the "
                                f"median layer's, {was:.1f} in the baseline (tolerance {tol:g})", None))
        tol = tolerances.get("act_std")
        if tol is not None:
            was = _decades_from(old.get("act_std"), 1.0)
            now_dev = _decades_from(cur.get("act_std"), 1.0)
            if was is not None and now_dev is not None and now_dev - was > tol:
                out.append((f"{name}: activation std {cur['act_std']:.3g} is {now_dev:.1f} decades "
                            f"from 1, {was:.1f} in the baseline (tolerance {tol:g})", None))
        for metric, what in (("dead_fraction", "dead units"), ("saturated_fraction", "saturated units")):
            tol = tolerances.get(metric)
            a, b = cur.get(metric), old.get(metric)
            if tol is not None and a is not None and a - (b or 0.0) > tol:
                out.append((f"{name}: {what} {a:.0%}, {(b or 0.0):.0%} in the baseline "
                            f"(tolerance {tol:g})", None))
        if cur.get("nonfinite") and not old.get("nonfinite"):
            out.append((f"{name}: non-finite values (finite in the baseline)", None))
    if base.get("recommended_healthy") and not now.get("recommended_healthy"):
        out.append((f"the recommended scheme ({now.get('recommended') or 'none'}) is no longer healthy", None))
    return out


def _settings_notes(audit: str, base: dict, now: dict) -> list:
    b, n = base.get("settings") or {}, now.get("settings") or {}
    changed = [f"{k} {b.get(k)!r} -> {n.get(k)!r}" for k in sorted(set(b) | set(n))
               if k != "target" and b.get(k) != n.get(k)]
    return [f"note: the {audit} baseline was recorded with other settings ({'; '.join(changed)}); "
            "rerun with --update-baseline if that is intended"] if changed else []


def read_baseline(path: str) -> dict:
    """The baseline document; a missing or unreadable file is a usage error."""
    if not os.path.isfile(path):
        raise UsageError(f"baseline {path} does not exist; run with --update-baseline to create it")
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise UsageError(f"baseline {path} cannot be read ({exc}); fix it or run with "
                         "--update-baseline to rewrite it") from None
    if not isinstance(data, dict) or data.get("schema") != BASELINE_SCHEMA:
        raise UsageError(f"baseline {path} is not an {BASELINE_SCHEMA} file; run with "
                         "--update-baseline to rewrite it")
    from audit.gate.baseline_schema import baseline_problem

    problem = baseline_problem(data)
    if problem:
        raise UsageError(f"baseline {path} is malformed: {problem}; fix it or run with "
                         "--update-baseline to rewrite it")
    return data


def write_baseline(path: str, data: dict) -> None:
    from audit.reports.files import write_atomic

    data = {**data, "schema": BASELINE_SCHEMA}
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def _effective_tolerances(audit: str, stored: Optional[dict], given: Optional[dict]) -> dict:
    from audit.config import DEFAULT_TOLERANCES

    return {**DEFAULT_TOLERANCES[audit], **(stored or {}), **(given or {})}


def _compare(audit: str, result, doc: Optional[dict], path: str, update: bool,
             tolerances: Optional[dict], checks: list) -> dict:
    """Compare one audit with its section of ``doc`` (or record it); returns the state
    :func:`_with_baseline` needs and updates ``doc`` in place when ``update``."""
    now = snapshot(audit, result, checks)
    section = (doc or {}).get(audit)
    if not update and not isinstance(section, dict):
        raise UsageError(f"baseline {path} has no {audit} snapshot; run with --update-baseline "
                         "to record it")
    tol = _effective_tolerances(audit, (section or {}).get("tolerances"), tolerances)
    if update:
        doc[audit] = {**now, "tolerances": tol}
        return {"regressions": [], "accepted": set(now["failing_checks"]), "path": path,
                "updated": True}
    for note in _settings_notes(audit, section, now):
        print(note, file=sys.stderr)
    found = regressions(audit, section, now, tol)
    return {"regressions": found, "accepted": set(section.get("failing_checks") or []),
            "path": path, "updated": False}


def apply_baseline(audit: str, result, path: Optional[str], update: bool,
                   tolerances: Optional[dict]) -> Optional[list]:
    """Compare ``result`` with the baseline at ``path`` (default ``audit-baseline.json``) and
    return the regressions as lines (empty: none), or record it when ``update`` (returns
    ``[]``). ``None`` when no baseline is in use. A missing file without ``update`` raises
    :class:`audit.cli.UsageError`. The outcome is also kept on ``result`` so that
    :func:`write_reports` marks accepted failures and lists the regressions."""
    if path is None and not update:
        return None
    path = path or DEFAULT_BASELINE
    doc = {} if update and not os.path.isfile(path) else None
    if doc is None:
        try:
            doc = read_baseline(path)
        except UsageError:
            if not update:
                raise
            doc = {}
    state = _compare(audit, result, doc, path, update, tolerances, checks_for(audit, result))
    if update:
        write_baseline(path, doc)
    result._audit_baseline = state
    return [text for text, _ in state["regressions"]]


def _with_baseline(audit: str, checks: list, state: Optional[dict]) -> list:
    """Checks that also failed in the baseline become skipped ("accepted"); a check that
    lists the regressions is added."""
    if state is None:
        return checks
    out = []
    name = os.path.basename(state["path"])
    for check in checks:
        if not check.passed and not check.skipped and check.name in state["accepted"]:
            check = dataclasses.replace(
                check, skipped=True,
                message=f"accepted by the baseline ({name}): {check.message}")
        out.append(check)
    found = state["regressions"]
    if state.get("updated"):
        message = f"baseline {state['path']} updated with the current results"
    elif found:
        message = "; ".join(text for text, _ in found)
    else:
        message = f"nothing got worse than in {state['path']}"
    where = next((w for _, w in found if w), None)
    fix = "" if not found else (
        "fix the regression, or accept the new state: rerun with --update-baseline and "
        "commit the baseline file")
    out.append(Check(audit, REGRESSION_CHECK, not found, message, fix, where))
    return out


# --------------------------------------------------------------------------- report files


def _summary_budget() -> Optional[int]:
    """Bytes left for us in ``$GITHUB_STEP_SUMMARY`` (None when it is not set)."""
    from audit.reports.markdown import GITHUB_SUMMARY_LIMIT

    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    try:
        used = os.path.getsize(target)
    except OSError:
        used = 0
    return GITHUB_SUMMARY_LIMIT - _SUMMARY_MARGIN - used


def _append_step_summary(gate: GateResult) -> None:
    from audit.reports.markdown import summary_markdown

    budget = _summary_budget()
    if budget is None:
        return
    if budget < _MIN_SUMMARY:
        print("audit: $GITHUB_STEP_SUMMARY is nearly full (1 MiB cap); the summary is only in "
              "summary.md", file=sys.stderr)
        return
    text = summary_markdown(gate, max_bytes=budget)
    try:
        with open(os.environ["GITHUB_STEP_SUMMARY"], "a", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        print(f"audit: could not append to $GITHUB_STEP_SUMMARY: {exc}", file=sys.stderr)


def _github_where(where: Optional[str]) -> Optional[str]:
    """A place relative to the repository (``$GITHUB_WORKSPACE``) when it lies inside it."""
    from audit.reports.common import split_where

    if not where:
        return where
    path, line, col = split_where(where)
    workspace = os.environ.get("GITHUB_WORKSPACE")
    if not path or path.startswith("<") or not workspace:
        return where
    full = os.path.abspath(path)
    try:
        rel = os.path.relpath(full, workspace)
    except ValueError:
        return where
    if rel.startswith(".."):
        return where
    rel = rel.replace(os.sep, "/")
    return rel + (f":{line}" if line is not None else "") + (f":{col}" if col is not None else "")


def _annotation_checks(checks: list, results: dict) -> list:
    """The failed checks, one per place: the generator check is repeated for each unseeded
    generator, so each place gets its own annotation; ``runs agree`` (the symptom) is left
    out where a check that names the cause already points."""
    out = _annotation_candidates([c for c in checks if c.name != "runs agree"], results)
    seen = {c.where for c in out if c.where}
    for check in _annotation_candidates([c for c in checks if c.name == "runs agree"], results):
        if check.where not in seen:
            out.append(check)
    return out


def _annotation_candidates(checks: list, results: dict) -> list:
    out = []
    for check in checks:
        if check.passed or check.skipped:
            continue
        result = results.get(check.audit)
        if (check.name == "no unseeded generators" and isinstance(result, DeterminismResult)
                and len(result.rng_escapes) > 1):
            from audit.probes.determinism.attribute import escape_fix

            for e in result.rng_escapes:
                if e.where:
                    out.append(dataclasses.replace(
                        check, where=_github_where(e.where),
                        message=f"{e.kind} is not seeded by the run's seed"
                                + (f" ({e.detail})" if e.detail else "")
                                + ": runs of the same code will differ",
                        fix=escape_fix(e.kind)))
            continue
        out.append(dataclasses.replace(check, where=_github_where(check.where)))
    return out


def _print_annotations(checks: list, results: dict) -> None:
    if os.environ.get("GITHUB_ACTIONS") != "true":
        return
    from audit.reports.github import annotations

    for line in annotations(_annotation_checks(checks, results)):
        print(line)
    sys.stdout.flush()


def _write_audit_files(out: str, audit: str, result) -> dict:
    from audit.reports import html, json_report

    json_path = os.path.join(out, f"{audit}.json")
    html_path = os.path.join(out, f"{audit}.html")
    json_report.write(result, json_path)
    if audit == "determinism":
        html.write_determinism(result, html_path)
    else:
        html.write_init(result, html_path)
    return {"json": json_path, "html": html_path}


def _write_gate_files(out: str, gate: GateResult, junit_path: Optional[str],
                      results: dict) -> dict:
    from audit.reports import junit
    from audit.reports.files import write_atomic
    from audit.reports.markdown import summary_markdown

    paths = {}
    summary = os.path.join(out, "summary.md")
    write_atomic(summary, summary_markdown(gate))
    paths["summary"] = summary
    _append_step_summary(gate)
    if junit_path:
        junit.write(gate.checks, junit_path)
        paths["junit"] = junit_path
    _print_annotations(gate.checks, results)
    return paths


def write_reports(out: str, audit: str, result, junit_path: Optional[str] = None) -> dict:
    """Write one audit's reports into ``out`` (created if missing): ``<audit>.json``,
    ``<audit>.html`` and ``summary.md``; JUnit XML at ``junit_path`` if given. Appends the
    summary to ``$GITHUB_STEP_SUMMARY`` when set and prints ``::error`` annotations when
    ``GITHUB_ACTIONS=true``. Every file is written atomically. Returns the paths by kind
    (``json``, ``html``, ``summary``, ``junit``)."""
    os.makedirs(out, exist_ok=True)
    paths = _write_audit_files(out, audit, result)
    state = getattr(result, "_audit_baseline", None)
    checks = _with_baseline(audit, checks_for(audit, result), state)
    gate = GateResult(checks=checks, reports={audit: f"{audit}.html"},
                      baseline_regressions=[t for t, _ in (state or {}).get("regressions", [])],
                      **{audit: result})
    paths.update(_write_gate_files(out, gate, junit_path, {audit: result}))
    return paths


# --------------------------------------------------------------------------- running the audits


def _progress(quiet: bool) -> Optional[Callable]:
    from audit.progress import display

    return display(quiet)


def run_audit(audit: str, s: dict, progress: Optional[Callable] = None):
    """Run one audit with settled settings ``s`` (as :func:`audit.commands.settings` gives
    them). A target that cannot be loaded, a bad option or an unusable device raises
    :class:`audit.cli.UsageError`."""
    if audit == "determinism":
        if s["runs"] < 2:
            raise UsageError("runs must be 2 or more: a comparison needs two runs")
        if not s.get("script"):
            from audit.probes.target import TargetError, check_target

            try:  # before the engine's imports (torch): a wrong name is told at once
                check_target(s["target"], os.getcwd())
            except TargetError as exc:
                raise UsageError(f"audit determinism: {exc}") from None
        from audit.probes.determinism.orchestrate import DeterminismOptions, TargetFailed, audit_determinism

        opts = DeterminismOptions(
            target=s["target"], runs=s["runs"], steps=s["steps"], seed=s["seed"],
            device=s["device"], input_shape=s.get("input_shape"),
            num_classes=s.get("num_classes"), jobs=s["jobs"], attribute=s["attribution"],
            script=s.get("script"), cwd=os.getcwd(), timeout=s.get("timeout"))
        try:
            return audit_determinism(opts, progress=progress)
        except TargetFailed as exc:
            raise UsageError(f"audit determinism: {exc}") from None
    if audit == "init":
        from audit.probes.runs import Stalled

        try:
            return _run_init(s, progress)
        except Stalled as exc:
            raise UsageError(f"audit init: timed out: {exc}; raise --timeout if a step can "
                             "take longer") from None
    raise ValueError(f"unknown audit {audit!r}")


def _run_init(s: dict, progress: Optional[Callable]):
    """The init audit in this process, under a watchdog that each step kicks."""
    from audit.probes.init.engine import run_init
    from audit.probes.runs import Watchdog
    from audit.probes.target import TargetError, load_target
    from audit.probes.worker import resolve_device, seed_everything

    schemes = s.get("schemes")
    if isinstance(schemes, str):
        schemes = [x.strip() for x in schemes.split(",") if x.strip()]
    try:
        device = resolve_device(s["device"])
    except RuntimeError as exc:
        raise UsageError(f"audit init: {exc}") from None
    seed_everything(s["seed"])
    with Watchdog(s.get("timeout"), "loading the target") as dog:
        try:
            setup = load_target(s["target"], input_shape=s.get("input_shape"),
                                num_classes=s.get("num_classes"), seed=s["seed"],
                                batches=max(s["steps"], 1))
        except TargetError as exc:
            raise UsageError(f"audit init: {exc}") from None

        def report(event):
            dog.kick(f"{event.phase}, in step {event.done}")
            if progress is not None:
                progress(event)

        try:
            return run_init(setup, schemes=schemes, steps=s["steps"], seed=s["seed"],
                            device=str(device), thresholds=s.get("thresholds") or None,
                            progress=report,
                            target=s["target"] or "audit.example:build (built-in)")
        except ValueError as exc:
            raise UsageError(f"audit init: {exc}") from None


def check(args) -> int:
    """``audit check``: every audit ``[tool.audit]`` enables, with its settings; reports of
    each in ``--out`` plus ``index.html`` and ``summary.md``; one JUnit file; the check
    summary. Exit 1 when a check fails (0 with ``--exit-zero``), 2 for a bad config, a
    target that cannot load or a run that crashed."""
    from audit import config
    from audit.commands import settings
    from audit.reports import html, terminal

    try:
        cfg = config.load(args.config)
    except config.ConfigError as exc:
        raise UsageError(str(exc)) from None
    audits = list(cfg.audits)
    baseline = args.baseline or cfg.baseline
    if args.update_baseline and not baseline:
        baseline = DEFAULT_BASELINE
    doc = None
    if baseline:
        if args.update_baseline:
            try:
                doc = read_baseline(baseline)
            except UsageError:
                doc = {}
        else:
            doc = read_baseline(baseline)  # fail before minutes of training
            for audit in audits:
                if not isinstance(doc.get(audit), dict):
                    raise UsageError(f"baseline {baseline} has no {audit} snapshot; run with "
                                     "--update-baseline to record it")

    results: dict = {}
    all_settings = {audit: settings(args, audit) for audit in audits}
    for audit in audits:
        progress = _progress(args.quiet)
        try:
            results[audit] = run_audit(audit, all_settings[audit], progress)
        finally:
            if progress is not None:
                progress.close()

    out = (all_settings[audits[0]]["out"] if audits else None) or args.out or "audit-report"
    os.makedirs(out, exist_ok=True)
    gate = GateResult(**results)
    for audit in audits:
        result = results[audit]
        _write_audit_files(out, audit, result)
        gate.reports[audit] = f"{audit}.html"
        checks = checks_for(audit, result)
        state = None
        if doc is not None:
            state = _compare(audit, result, doc, baseline, args.update_baseline,
                             all_settings[audit].get("tolerances"), checks)
            gate.baseline_regressions += [f"{audit}: {text}" for text, _ in state["regressions"]]
        gate.checks += _with_baseline(audit, checks, state)
    if doc is not None and args.update_baseline:
        write_baseline(baseline, doc)

    index = os.path.join(out, "index.html")
    from audit.reports.files import write_atomic

    write_atomic(index, html.index_html(gate))
    _write_gate_files(out, gate, args.junit_xml, results)

    if args.quiet:
        print(gate_verdict_line(gate, index))
    else:
        print(terminal.check_summary(gate), end="")
        print(f"\nReport: {index}")
        if doc is not None and args.update_baseline:
            print(f"Baseline written: {baseline}")
    errors = [f"audit {a}: {r.error}" for a, r in results.items() if r.error]
    for line in errors:
        print(line, file=sys.stderr)
    if args.exit_zero:
        return EXIT_OK
    if errors:
        return EXIT_USAGE
    return EXIT_OK if gate.passed else EXIT_FOUND
