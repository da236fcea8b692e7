"""The determinism audit as a kind: settings, flags, ``[tool.audit.determinism]``, the run,
the checks (runs completed, runs agree, no unseeded generators, one ``cause: SOURCE`` per other
cause), the baseline snapshot and regressions, and the reporters."""
from __future__ import annotations

import argparse
import dataclasses
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from audit import config
from audit.kinds import snapshot_shape as shape
from audit.probes.progress import Reporter
from audit.kinds.base import (AuditKind, Regression, Settings, at_least, failing_names, plural,
                              positive_arg,
                              rounded)
from audit.probes.determinism import latent
from audit.probes.determinism.cuda_ops_check import LEVELS, cuda_ops_check
from audit.probes.errors import UsageError
from audit.probes.results import DISTRIBUTED_SOURCES, STAGES, Check, DeterminismResult
from audit.reports import html, terminal
from audit.reports.common import (NONFINITE_FIX, determinism_headline, determinism_sentence,
                                  nonfinite_sentence, one_line, source_title, split_where,
                                  stage_title)
from audit.probes.results.records import Status

if TYPE_CHECKING:  # torch: imported when the audit runs
    from audit.probes.run.launcher import RunOptions

#: Baseline tolerances: the first divergence's max |diff| may grow by this factor.
TOLERANCES = {"max_abs_diff": 10.0}


@dataclass
class DeterminismSettings(Settings):
    runs: int = 2
    steps: int = 20
    jobs: int = 1
    attribution: bool = True
    cuda_ops: str = "warn"  # "fail": ops nondeterministic on CUDA fail the gate
    latent: str = "warn"  # "fail": sources that act only sometimes fail the gate
    nproc: int = 1  # ranks per run under torch.distributed
    across_nodes: bool = False  # with the Ray executor: the runs on different nodes


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=positive_arg, default=None,
                   help="training steps per run (default 20)")
    p.add_argument("--runs", type=at_least(2, ": a comparison needs two runs"), default=None,
                   help="fresh processes to compare (default 2)")
    p.add_argument("--jobs", type=positive_arg, default=None, help="runs at once (default 1)")
    p.add_argument("--no-attribution", dest="attribution", action="store_const", const=False,
                   default=None, help="skip the knob reruns")
    p.add_argument("--nproc", type=positive_arg, default=None,
                   help="ranks per run under torch.distributed (gloo on CPU, NCCL on GPU; "
                        "with a script: its ranks, started as torchrun starts them; default 1)")
    p.add_argument("--across-nodes", action="store_const", const=True, default=None,
                   help="with --executor ray: run the compared runs on different nodes (does it "
                        "reproduce on another machine?)")


def check_table(chk: config.Checker, table: dict[str, Any]) -> dict[str, Any]:
    rules = {"runs": config.positive_int(2), "steps": config.positive_int(),
             "jobs": config.positive_int(), "attribution": config.boolean(),
             "cuda_ops": ((lambda v: v in LEVELS), "'warn' or 'fail'"),
             "latent": ((lambda v: v in latent.LEVELS), "'warn' or 'fail'"),
             "nproc": config.positive_int()}
    tolerances = (lambda c, v: config.check_tolerances(c, "determinism", v, TOLERANCES,
                                                       {"max_abs_diff": 1}))
    return config.check_table(chk, "determinism", table, rules, {"tolerances": tolerances})


def run(s: DeterminismSettings, progress: Reporter = None) -> DeterminismResult:
    from audit.probes.determinism.orchestrate import audit_determinism
    from audit.probes.run.launcher import RunOptions, TargetFailed

    if s.runs < 2:
        raise UsageError("runs must be 2 or more: a comparison needs two runs")
    if s.across_nodes and s.executor != "ray":
        raise UsageError("audit determinism: --across-nodes places runs on a Ray cluster's "
                         "nodes; add --executor ray (and --ray-address for a cluster)")
    if s.across_nodes and s.nproc > 1:
        raise UsageError("audit determinism: --across-nodes runs single-process runs; the ranks "
                         "of --nproc run on this machine. Leave out one of them")
    opts = RunOptions(
        target=s.target, runs=s.runs, steps=s.steps, seed=s.seed, device=s.device,
        input_shape=s.input_shape, num_classes=s.num_classes, jobs=max(s.jobs, s.runs)
        if s.across_nodes else s.jobs, attribute=s.attribution, script=s.script, cwd=s.cwd,
        timeout=s.timeout, executor=s.executor, ray_address=s.ray_address,
        across_nodes=s.across_nodes)
    try:
        if s.script:
            result = _run_script(s, opts, progress)
        elif s.nproc > 1:
            result = _run_distributed(s, opts, progress)
        else:
            result = audit_determinism(opts, progress=progress)
    except TargetFailed as exc:
        raise UsageError(f"audit determinism: {exc}") from None
    result.cuda_ops_level, result.latent_level = s.cuda_ops, s.latent
    return result


def _run_distributed(s: DeterminismSettings, opts: RunOptions, progress: Reporter) -> DeterminismResult:
    from audit.probes.determinism.distributed import audit_distributed

    return audit_distributed(opts, s.nproc, progress=progress)


def _run_script(s: DeterminismSettings, opts: RunOptions, progress: Reporter) -> DeterminismResult:
    """Script mode: one process per run, or ranks (``--nproc``, torchrun, mp.spawn)."""
    from audit.probes.determinism.script_launcher import audit_script

    try:
        return audit_script(opts, s.nproc, progress=progress)
    except UsageError as exc:  # e.g. --nproc and the launcher's rank count disagree
        raise UsageError(f"audit determinism: {exc}") from None


# --------------------------------------------------------------------------- checks

_AT = re.compile(r"\(at ([^()]+:\d+)\)\s*$")


def _completed_check(result: DeterminismResult) -> Check:
    bad = [r for r in result.run_info
           if r.status in (Status.CRASHED, Status.KILLED, Status.EXITED, Status.TIMED_OUT, Status.INTERRUPTED)]
    if result.error or bad:
        first = bad[0] if bad else None
        match = _AT.search(first.message or "") if first is not None else None
        message = result.error or (  # no error: a run failed, so bad[0] exists
            f"run {bad[0].index} {bad[0].status} after {bad[0].steps_completed} of "
            f"{result.steps} steps: {bad[0].message}")
        return Check("determinism", "runs completed", False,
                     message + "; the comparison covers only the steps before it",
                     "fix the error in the training code; run `audit determinism "
                     "--debug` to see the run's output", match.group(1) if match else None)
    short = [r for r in result.run_info if r.status == Status.ENDED_EARLY]
    note = (f"; {plural(len(short), 'run')} ended before {result.steps} steps "
            "(the data ran out)") if short else ""
    return Check("determinism", "runs completed", True,
                 f"{plural(result.runs, 'run')} of {plural(result.steps, 'step')}" + note)


def _agree_check(result: DeterminismResult) -> Check:
    fix, where = "", None
    run_causes = [c for c in result.causes if c.source not in DISTRIBUTED_SOURCES]
    if run_causes:
        top = next((c for c in run_causes if c.confirmed),
                   next((c for c in run_causes if c.source != "unknown"), run_causes[0]))
        fix, where = top.fix, top.where
    agree = "runs agree on every rank" if result.nproc else "runs agree"
    if result.verdict == "deterministic" and result.error and not result.first_divergence:
        return Check("determinism", agree, False,
                     "undecided: a run crashed before the runs could be compared", skipped=True)
    ok = result.verdict == "deterministic"
    return Check("determinism", agree, ok, determinism_sentence(result),
                 "" if ok else fix, None if ok else where)


def _cause_checks(result: DeterminismResult) -> list[Any]:
    """One ``cause: SOURCE`` check per cause source the other checks do not already carry."""
    by_source: dict[str, Any] = {}
    for cause in result.causes:
        if cause.source != "unseeded_rng" and not (result.nproc and cause.source in DISTRIBUTED_SOURCES):
            by_source.setdefault(cause.source, []).append(cause)
    out = []
    for source, causes in by_source.items():
        first = causes[0]
        state = "confirmed" if first.confirmed else "not confirmed"
        evidence = "; ".join(c.evidence for c in causes if c.evidence)
        out.append(Check("determinism", f"cause: {source}", False,
                         f"{source_title(source)} ({state}): {evidence}",
                         first.fix, next((c.where for c in causes if c.where), None)))
    return out


def checks(result: DeterminismResult) -> list[Check]:
    """The determinism audit as checks: runs completed, runs agree, no unseeded generators,
    finite values, no latent sources, the CUDA op scan, the distributed checks with ``--nproc``, and one
    ``cause: SOURCE`` per cause source other than ``unseeded_rng``."""
    out = [_completed_check(result), _agree_check(result), _generator_check(result),
           _nonfinite_check(result), latent.check(result)]
    scan = cuda_ops_check(result, result.cuda_ops_level)
    if scan is not None:
        out.append(scan)
    if result.nproc:
        out += distributed_checks(result)
    return out + _cause_checks(result)


def distributed_checks(result: DeterminismResult) -> list[Any]:
    """``--nproc``: "replicas agree" and "sampler reshuffles per epoch"."""
    replicas = result.replicas
    unsynced = next((c for c in result.causes if c.source == "unsynced_state"), None)
    if replicas is None:
        out = [Check("determinism", "replicas agree", False,
                     "undecided: no run finished with every rank traced", skipped=True)]
    elif replicas.verdict == "consistent":
        out = [Check("determinism", "replicas agree", True,
                     f"parameters identical on all {result.nproc} ranks after every step, buffers "
                     "identical wherever DDP synchronizes them")]
    else:
        out = [Check("determinism", "replicas agree", False,
                     unsynced.evidence if unsynced else "the ranks' replicas part",
                     unsynced.fix if unsynced else "", unsynced.where if unsynced else None)]
    replayed = [c for c in result.causes if c.source == "sampler_epoch"]
    if replayed:
        out.append(Check("determinism", "sampler reshuffles per epoch", False,
                         "; ".join(c.evidence for c in replayed), replayed[0].fix,
                         replayed[0].where))
    else:
        out.append(Check("determinism", "sampler reshuffles per epoch", True,
                         "no DistributedSampler drew the same order twice in these steps"))
    return out


def _nonfinite_check(result: DeterminismResult) -> Check:
    """``finite loss and gradients``: whatever the verdict, a NaN or inf is a failed training."""
    if result.nonfinite is None:
        return Check("determinism", "finite loss and gradients", True,
                     "every loss and gradient of every run was finite")
    return Check("determinism", "finite loss and gradients", False,
                 nonfinite_sentence(result.nonfinite), NONFINITE_FIX)


def _quiet_note(result: DeterminismResult) -> str:
    """The generators made without a seed that nothing drew from: a note, nothing to fix."""
    quiet = [e for e in result.rng_escapes if not e.drawn]
    if not quiet:
        return ""
    never = sum(1 for e in quiet if e.use == "unused")
    parts = ([f"{never} never drawn from"] if never else []) + (
        [f"{len(quiet) - never} reseeded before their first draw"] if len(quiet) > never else [])
    return (f"{plural(len(quiet), 'generator')} made without a seed did not reach the training "
            f"({', '.join(parts)}): nothing to fix")


def _generator_check(result: DeterminismResult) -> Check:
    """Fails when the runs part and a generator the seed does not reach was drawn from (or a
    seed changed between runs). Drawn from while the runs agreed, it is a latent source (that
    check warns or fails); never drawn from, or reseeded before its first draw, a note."""
    from audit.probes.determinism.attribute import generator_fix, made_text  # torch when needed

    escapes = [e for e in result.rng_escapes if e.drawn]
    rng_causes = [c for c in result.causes if c.source == "unseeded_rng"]
    note = _quiet_note(result)
    if (not escapes or result.verdict == "deterministic") and not rng_causes:
        message = "every random generator the training used follows the seed"
        if escapes:
            message = (f"{plural(len(escapes), 'generator')} the matched seed does not reach "
                       f"{'was' if len(escapes) == 1 else 'were'} drawn from, but the runs "
                       "agreed: see the check 'no latent sources'")
        return Check("determinism", "no unseeded generators", True,
                     "; ".join(m for m in (message, note) if m))
    confirmed = any(c.confirmed for c in rng_causes)
    if escapes:
        message = (f"{plural(len(escapes), 'generator')} the matched seed does not reach: "
                   + "; ".join(made_text(e) + (f" ({e.detail})" if e.detail else "")
                               for e in escapes) + ". ")
    else:
        message = "; ".join(c.evidence for c in rng_causes) + ". "
    if confirmed:
        message += "Seeding them was proven to remove the divergence between the runs."
    elif not any(t.knob in ("seed_escapes", "pin_seeds") for t in result.knob_trials):
        message += ("Attribution did not run, so whether they cause the divergence is not "
                    "proven; seeding them is the first thing to try.")
    else:
        message += "Seeding them alone did not remove the divergence; fix them anyway."
    if escapes:
        fix = "\n".join(dict.fromkeys(generator_fix(e) for e in escapes))
        where = next((e.where for e in escapes if e.where), None)
    else:
        fix = rng_causes[0].fix
        where = next((c.where for c in rng_causes if c.where), None)
    return Check("determinism", "no unseeded generators", False, message, fix, where)


def place_annotations(check: Check, result: DeterminismResult) -> list[Check]:
    """The generator check once per unseeded generator, so each place gets an annotation."""
    from audit.probes.determinism.attribute import generator_fix  # torch when needed

    escapes = [e for e in result.rng_escapes if e.drawn and e.where]
    if check.name != "no unseeded generators" or check.passed or len(escapes) <= 1:
        return [check]
    return [dataclasses.replace(
        check, where=e.where,
        message=e.kind + (f" (made by {e.made_by})" if e.made_by else "")
                + " is not seeded by the run's seed"
                + (f" ({e.detail})" if e.detail else "") + ": runs of the same code will differ",
        fix=generator_fix(e)) for e in escapes]


# --------------------------------------------------------------------------- baseline


def _differing_stages(result: DeterminismResult) -> list[Any]:
    stages = set()
    for row in result.timeline:
        for stage, state in (row.stages or {}).items():
            if state == "differ":
                stages.add(stage)
    if result.first_divergence is not None:
        stages.add(result.first_divergence.stage)
    return [s for s in STAGES if s in stages]


def snapshot(result: DeterminismResult) -> dict[str, Any]:
    """What a baseline keeps of a result (plain, JSON-able, numbers to 4 significant digits)."""
    div = result.first_divergence
    return {
        "settings": {"runs": result.runs, "steps": result.steps, "seed": result.seed,
                     "device": result.device, "target": result.target},
        "verdict": result.verdict,
        "crashed": bool(result.error),
        "nondeterministic_stages": _differing_stages(result),
        "first_divergence": None if div is None else {
            "step": div.step, "stage": div.stage, "module": div.module,
            "max_abs_diff": rounded(div.max_abs_diff)},
        "cause_sources": sorted({c.source for c in result.causes}),
        "rng_escapes": sorted(({"kind": e.kind, "where": e.where} for e in result.rng_escapes
                               if e.drawn), key=lambda e: (e["kind"], e["where"] or "")),
        "failing_checks": failing_names(checks(result)),
    }


def _where_file(where: Optional[str]) -> Optional[str]:
    return split_where(where)[0] if where else None


def regressions(base: dict[str, Any], now: dict[str, Any], tolerances: dict[str, Any]) -> list[Regression]:
    """``(text, where)`` pairs: how ``now`` (a snapshot) is worse than ``base``."""
    out: list[Regression] = []
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
    base_places: dict[tuple[str, Optional[str]], set[str]] = {}
    for e in base.get("rng_escapes") or []:
        base_places.setdefault((e["kind"], _where_file(e["where"])), set()).add(e["where"])
    now_places: dict[tuple[str, Optional[str]], list[str]] = {}
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


# --------------------------------------------------------------------------- reporters


def verdict_detail(result: DeterminismResult) -> str:
    text = ""
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
    elif any(e.drawn for e in result.rng_escapes):
        drawn = sum(1 for e in result.rng_escapes if e.drawn)
        text += f", but {plural(drawn, 'unseeded generator')} drawn from"
    return text + f" ({result.runs} runs x {plural(result.steps, 'step')})"


def index(result: DeterminismResult) -> tuple[Any, ...]:
    return determinism_sentence(result), "", ""


#: What a baseline's determinism snapshot must hold (checked when the file is read).
SNAPSHOT_RULES = {
    **shape.COMMON,
    "crashed": (shape.boolean, "true or false"),
    "nondeterministic_stages": (shape.str_list, "an array of stage names"),
    "first_divergence": (shape.optional(shape.table({
        "step": shape.optional(shape.number), "stage": shape.string,
        "module": shape.optional(shape.string), "max_abs_diff": shape.optional(shape.number)})),
        "null or a table with step, stage, module, max_abs_diff"),
    "cause_sources": (shape.str_list, "an array of cause sources"),
    "rng_escapes": (shape.records({"kind": shape.string, "where": shape.optional(shape.string)}),
                    "an array of tables with kind and where"),
}

KIND = AuditKind(
    name="determinism", help="do runs under matched seeds agree bit for bit?",
    settings=DeterminismSettings, add_arguments=add_arguments, check_table=check_table,
    tolerances=TOLERANCES, run=run, checks=checks, snapshot=snapshot, regressions=regressions,
    headline=determinism_headline, verdict_detail=verdict_detail,
    summary=terminal.determinism_summary, html=html.determinism_html,
    result_type=DeterminismResult, index=index, script_mode=True, launchers=True,
    annotations=place_annotations, checked_by_default=True, snapshot_rules=SNAPSHOT_RULES)
