"""The resume audit as a kind: settings, flags, ``[tool.audit.resume]``, the run, the checks
(runs completed, uninterrupted runs agree, resume reproduces the run, one ``cause: SOURCE`` per
cause), the baseline snapshot and regressions, and the reporters."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Optional

from audit import config
from audit.probes.progress import Reporter
from audit.kinds.base import AuditKind, Regression, Settings, failing_names, positive_arg
from audit.probes.errors import UsageError
from audit.probes.results import Check
from audit.probes.results.resume import ResumeResult
from audit.reports import html, terminal
from audit.reports.common import resume_headline, resume_sentence, resume_source_title

#: No numeric tolerances: a resume either reproduces the run or it does not.
TOLERANCES: dict[str, Any] = {}


@dataclass
class ResumeSettings(Settings):
    steps: Optional[int] = None  # S; None: past the next epoch boundary after K
    at: Optional[int] = None  # K; None: inside the second epoch
    jobs: int = 2
    attribution: bool = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=positive_arg, default=None,
                   help="steps S of the uninterrupted run (default: past the epoch boundary after K)")
    p.add_argument("--at", type=positive_arg, default=None,
                   help="checkpoint step K: the resumed run starts at step K (default: inside "
                        "the second epoch)")
    p.add_argument("--jobs", type=positive_arg, default=None, help="runs at once (default 2)")
    p.add_argument("--no-attribution", dest="attribution", action="store_const", const=False,
                   default=None, help="skip the reruns that prove which piece is missing")


def check_table(chk: config.Checker, table: dict[str, Any]) -> dict[str, Any]:
    rules = {"steps": config.positive_int(2), "at": config.positive_int(),
             "jobs": config.positive_int(), "attribution": config.boolean()}
    return config.check_table(chk, "resume", table, rules)


def run(s: ResumeSettings, progress: Reporter = None) -> ResumeResult:
    from audit.probes.resume.orchestrate import ResumeOptions, audit_resume

    opts = ResumeOptions(target=s.target, steps=s.steps, at=s.at, seed=s.seed, device=s.device,
                         input_shape=s.input_shape, num_classes=s.num_classes, jobs=s.jobs,
                         attribute=s.attribution, cwd=s.cwd, executor=s.executor,
                         ray_address=s.ray_address)
    try:
        return audit_resume(opts, progress=progress)
    except UsageError as exc:
        raise UsageError(f"audit resume: {exc}") from None


# --------------------------------------------------------------------------- checks


def checks(result: ResumeResult) -> list[Check]:
    """Runs completed; the uninterrupted runs agree; the resumed run reproduces the
    uninterrupted one; one ``cause: SOURCE`` per confirmed cause."""
    out = [Check("resume", "runs completed", result.error is None,
                 result.error or f"A ({result.steps} steps, saving at step {result.at}) and C "
                                 f"(from step {result.at}) ran",
                 "" if result.error is None else "fix the error in the training or checkpoint code")]
    nondeterministic = result.verdict == "nondeterministic"
    out.append(Check("resume", "uninterrupted runs agree", not nondeterministic,
                     resume_sentence(result) if nondeterministic else
                     "the uninterrupted run is reproducible as far as the audit looked",
                     "audit determinism TARGET    # find the nondeterminism first"
                     if nondeterministic else ""))
    top = next((c for c in result.causes if c.confirmed), result.causes[0] if result.causes else None)
    undecided = result.error is not None or nondeterministic
    passed = result.verdict == "equivalent" and result.error is None
    out.append(Check("resume", "resume reproduces the run", passed, resume_sentence(result),
                     top.fix if top is not None and not passed else "",
                     top.where if top is not None and not passed else None,
                     skipped=undecided))
    if result.verdict == "diverges":
        for cause in result.causes:
            out.append(Check("resume", f"cause: {cause.source}", False,
                             f"{resume_source_title(cause.source)}: {cause.evidence}",
                             cause.fix, cause.where))
    return out


# --------------------------------------------------------------------------- baseline


def snapshot(result: ResumeResult) -> dict[str, Any]:
    """What a baseline keeps of a result (plain, JSON-able)."""
    div = result.first_divergence
    return {
        "settings": {"steps": result.steps, "at": result.at, "seed": result.seed,
                     "device": result.device, "target": result.target,
                     "checkpoint": result.checkpoint},
        "verdict": result.verdict,
        "error": bool(result.error),
        "first_divergence": None if div is None else {"step": div.step, "stage": div.stage,
                                                      "tensor": div.tensor},
        "cause_sources": sorted({c.source for c in result.causes}),
        "state_pieces": sorted({d.piece for d in result.state_differences}),
        "failing_checks": failing_names(checks(result)),
    }


def regressions(base: dict[str, Any], now: dict[str, Any], tolerances: dict[str, Any]) -> list[Regression]:
    """``(text, where)`` pairs: how ``now`` (a snapshot) is worse than ``base``."""
    out: list[Regression] = []
    if now.get("error") and not base.get("error"):
        out.append(("a run of the resume audit did not finish; in the baseline all did", None))
    if base.get("verdict") == "equivalent" and now.get("verdict") != "equivalent":
        div = now.get("first_divergence")
        text = f"the resumed run no longer reproduces the run ({now.get('verdict')})"
        if div:
            text += f": it parts at step {div['step']} in the {div['stage']} stage"
        out.append((text, None))
    for source in now.get("cause_sources") or []:
        if source not in (base.get("cause_sources") or []):
            out.append((f"new resume cause: {source}", None))
    for piece in now.get("state_pieces") or []:
        if piece not in (base.get("state_pieces") or []):
            out.append((f"right after the load, the {piece} now differs", None))
    return out


# --------------------------------------------------------------------------- reporters


def verdict_detail(result: ResumeResult) -> str:
    div = result.first_divergence
    text = ""
    if div is not None:
        text += (": parts right after the load" if div.stage == "state"
                 else f": parts at step {div.step} in the {div.stage} stage")
        if result.causes:
            text += f"; cause: {', '.join(c.source for c in result.causes)}"
    return text + f" (K={result.at}, S={result.steps})"


def index(result: ResumeResult) -> tuple[Any, ...]:
    return resume_sentence(result), "", ""


KIND = AuditKind(
    name="resume", help="does resuming from a checkpoint reproduce the uninterrupted run?",
    settings=ResumeSettings, add_arguments=add_arguments, check_table=check_table,
    tolerances=TOLERANCES, run=run, checks=checks, snapshot=snapshot, regressions=regressions,
    headline=resume_headline, verdict_detail=verdict_detail, summary=terminal.resume_summary,
    html=html.resume_html, result_type=ResumeResult, index=index)
