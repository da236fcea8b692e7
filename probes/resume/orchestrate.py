"""Running ``audit resume``: uninterrupted against stop-save-load-continue, then proof.

1. **Runs.** In a fresh worker process, A trains S steps without stopping and saves at step K
   (the target's ``save`` or the default checkpoint), as a checkpointing run does; then C
   loads that checkpoint in a fresh process and trains steps K .. S-1. C is compared with A:
   the state right after the load, then every step from K on. If they agree the audit ends
   here (two processes: about two plain runs).
2. **Is A reproducible?** A second uninterrupted run; if it parts from A the verdict is
   ``nondeterministic`` and the report points to ``audit determinism``.
3. **Attribution.** C again with one piece restored by the tool at a time (A saved them all);
   a piece that makes C match A is a proven cause. If none does alone, all together and then
   all-but-one say which are needed together.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from audit.probes.run import compare as det_compare
from audit.probes.run.launcher import Launcher, Outcome, RunOptions
from audit.probes.errors import TargetError, UsageError
from audit.probes.progress import Progress, Reporter, silent
from audit.probes.results import Divergence, RunInfo
from audit.probes.results.resume import ResumeResult
from audit.probes.resume import attribute, compare
from audit.probes.resume.session import choose_plan
from audit.probes.run.spec import ResumeSpec, RunSpec
from audit.probes.run.target import label, parse_spec
from audit.probes.results.records import Status


@dataclass
class ResumeOptions:
    target: Optional[str] = None
    steps: Optional[int] = None  # S; None: chosen from the epoch length
    at: Optional[int] = None  # K; None: inside the second epoch
    seed: int = 0
    device: str = "auto"
    input_shape: Optional[list[Any]] = None
    num_classes: Optional[int] = None
    jobs: int = 2
    attribute: bool = True
    cwd: Optional[str] = None
    # Every resume run shares the checkpoint folder: they run on this machine whatever this
    # says (passed on so that the Launcher's rule, not ours, decides).
    executor: str = "local"
    ray_address: Optional[str] = None


class _Runs:
    """Worker specs for the roles, on top of the :class:`Launcher` every engine that traces uses."""

    def __init__(self, opts: ResumeOptions, folder: str):
        self.opts = opts
        self.checkpoints = os.path.join(folder, "checkpoint")
        os.makedirs(self.checkpoints, exist_ok=True)
        self.launcher = Launcher(RunOptions(
            target=opts.target, seed=opts.seed, device=opts.device, input_shape=opts.input_shape,
            num_classes=opts.num_classes, cwd=opts.cwd, executor=opts.executor,
            ray_address=opts.ray_address), folder)

    def spec(self, name: str, role: str, knobs: Any = (), folder: Optional[str] = None) -> RunSpec:
        folder = folder or self.checkpoints
        os.makedirs(folder, exist_ok=True)
        resume = ResumeSpec(role=role, at=self.opts.at, folder=folder, knobs=list(knobs))
        # steps 0: the worker chooses S from the epoch length (the session's plan)
        return self.launcher.spec(name, self.opts.steps or 0, resume=resume)

    def run(self, specs: list[Any]) -> list[Any]:
        outs = self.launcher.run_all(specs, self.opts.jobs)
        for out in outs:
            if out.end.get("status") == Status.TARGET_ERROR:
                raise TargetError(out.end.get("message", "the target could not be loaded"))
        return outs


def _run_info(index: int, out: Outcome) -> RunInfo:
    end = out.end
    stopped = getattr(out, "stopped", None)
    status = stopped or end.get("status") or (
        Status.KILLED if out.exit_code is not None and out.exit_code < 0 else Status.CRASHED)
    message = end.get("message", "") or (out.output_tail[-800:] if not end else "")
    if end.get("where"):
        message += f" (at {end['where']})"
    return RunInfo(index=index, steps_completed=out.steps_done, status=status, message=message,
                   exit_code=out.exit_code, seconds=round(out.seconds, 3))


def check_options(opts: ResumeOptions) -> None:
    """Bad ``--steps``/``--at`` are usage errors before any training."""
    for name, value in (("--steps", opts.steps), ("--at", opts.at)):
        if value is not None and value < 1:
            raise UsageError(f"{name} must be a positive number of steps, got {value}")
    if opts.steps is not None and opts.at is not None:
        choose_plan(opts.steps, opts.at, None)
    if opts.target:
        where = parse_spec(opts.target).where
        if where.endswith(".py") and not os.path.isfile(os.path.join(opts.cwd or os.getcwd(), where)):
            raise TargetError(f"target file {where!r} does not exist; check the path")


def audit_resume(opts: ResumeOptions, progress: Reporter = None,
                 keep: Optional[str] = None) -> ResumeResult:
    """Run the whole audit; raises :class:`TargetError` when the target cannot be loaded or
    its checkpoint cannot be saved or read back."""
    check_options(opts)
    started = time.monotonic()
    folder = keep or tempfile.mkdtemp(prefix="audit-resume-")
    try:
        result = _audit(_Runs(opts, folder), progress or silent)
        result.seconds = round(time.monotonic() - started, 3)
        return result
    finally:
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)


def _audit(runs: _Runs, say: Callable[[Progress], None]) -> ResumeResult:
    say(Progress("uninterrupted run, saving at step K"))
    (a,) = runs.run([runs.spec("a-uninterrupted", "a")])
    if a.end.get("status") != Status.OK:
        return _failed(runs, [a], "the uninterrupted run (A)", a)
    say(Progress("resumed run"))
    (c,) = runs.run([runs.spec("c-resumed", "c")])
    result = _base(runs, a, c)
    if c.end.get("status") != Status.OK:
        info = _run_info(1, c)
        result.error = f"the resumed run (C) {info.status}: {info.message}"
        return result
    diffs = compare.state_differences(a.records, c.records)
    parting = compare.step_parting(a.records, c.records, result.at)
    result.state_differences = diffs
    result.timeline = compare.timeline(a.records, c.records, result.at, result.steps, bool(diffs))
    if parting is None:
        if diffs:
            result.detail["latent_state"] = (
                "the state right after the load differs, but no step from K on trains on it "
                "within these steps")
        return result
    _judge(runs, result, a, diffs, parting, say, compare.moot_knobs(a.records, c.records))
    return result


def _plan_record(*outs: Outcome) -> dict[str, Any]:
    return next((compare.record(o.records, "plan") for o in outs if compare.record(o.records, "plan")), {})


def _base(runs: _Runs, a: Outcome, c: Outcome) -> ResumeResult:
    plan = _plan_record(a)
    env = a.env or c.env
    environment = env.get("environment", {})
    result = ResumeResult(
        verdict="equivalent", steps=plan.get("steps", runs.opts.steps or 0),
        at=plan.get("at", runs.opts.at or 0), seed=runs.opts.seed,
        device=environment.get("device", runs.opts.device), environment=environment,
        target=label(runs.opts.target), checkpoint=plan.get("checkpoint", "default"),
        epoch_length=plan.get("epoch_length"), auto=bool(plan.get("auto")),
        run_info=[_run_info(i, o) for i, o in enumerate((a, c))])
    if env.get("description"):
        result.detail["data"] = env["description"]
    if plan.get("epoch_length") and plan.get("skip") == 0:
        result.detail["at_boundary"] = "K falls on an epoch boundary: a restarting loader goes unnoticed"
    length = plan.get("epoch_length")
    if length and result.steps <= (result.at // length + 1) * length:
        result.detail["no_boundary"] = (f"S does not cross the next epoch boundary (an epoch is "
                                        f"{length} batches); pass --steps past it to check the next epoch's order")
    return result


def _failed(runs: _Runs, outs: list[Any], name: str, out: Outcome) -> ResumeResult:
    plan = _plan_record(*outs)
    info = _run_info(0, out)
    return ResumeResult(verdict="diverges", steps=plan.get("steps", runs.opts.steps or 0),
                        at=plan.get("at", runs.opts.at or 0), seed=runs.opts.seed,
                        target=label(runs.opts.target),
                        run_info=[_run_info(i, o) for i, o in enumerate(outs)],
                        error=f"{name} {info.status}: {info.message}")


def _removed(a: Outcome, c: Outcome, at: int, steps: int) -> bool:
    return c.steps_done >= steps - at and compare.step_parting(a.records, c.records, at) is None


def _judge(runs: _Runs, result: ResumeResult, a: Outcome, diffs: list[Any], parting: Any, say: Any,
           moot: frozenset[Any]) -> None:
    """Attribution, most likely piece first. A piece that makes a fresh resumed run match A
    bit for bit also shows A is reproducible; otherwise a second uninterrupted run decides
    whether the target is nondeterministic before any more pieces are tried."""
    plan_record = _plan_record(a)
    result.verdict = "diverges"
    divergence = compare.divergence(diffs, parting, result.at)
    assert divergence is not None  # judged only when the steps part
    result.first_divergence = divergence
    if parting.stage == "data" and parting.data:
        result.detail["data_difference"] = parting.data
    if parting.streams:
        result.detail["rng_streams"] = parting.streams
    knobs = attribute.plan(plan_record, parting, diffs, moot) if runs.opts.attribute else []
    trials = []
    if knobs:
        say(Progress(f"rerunning with {knobs[0]}"))
        (first,) = runs.run([runs.spec(f"c-{knobs[0]}", "c", [knobs[0]])])
        trials.append(attribute.trial(knobs[0], _removed(a, first, result.at, result.steps), result.steps))
    if not any(t.removed for t in trials):
        say(Progress("second uninterrupted run"))
        (again_out,) = runs.run([runs.spec("a2-uninterrupted", "a", folder=runs.checkpoints + "-a2")])
        again = det_compare.first_parting(a.records, again_out.records)
        if again is not None:
            _nondeterministic(result, again)
            return
        trials += _more_trials(runs, a, result, knobs, len(trials), say)
    result.knob_trials = trials
    result.causes = attribute.causes(divergence, trials, result.checkpoint,
                                     plan_record.get("save_where"), result.steps)


def _nondeterministic(result: ResumeResult, again: Any) -> None:
    result.verdict = "nondeterministic"
    result.first_divergence = None
    result.uninterrupted = Divergence(step=again.step, stage=again.stage, tensor=again.tensor)
    place = "before the first step" if again.step is None else f"at step {again.step}"
    result.causes = [attribute.nondeterministic_cause(f"{place}, stage {again.stage}")]


def _more_trials(runs: _Runs, a: Outcome, result: ResumeResult, knobs: list[str], done: int, say: Any) -> list[Any]:
    """The remaining knobs one at a time (``jobs`` at once) until one removes the divergence;
    if none does, all together, then all-but-one."""
    at, steps, trials = result.at, result.steps, []
    for i in range(done, len(knobs), max(1, runs.opts.jobs)):
        batch = knobs[i:i + max(1, runs.opts.jobs)]
        say(Progress(f"rerunning with {', '.join(batch)}"))
        outs = runs.run([runs.spec(f"c-{k}", "c", [k]) for k in batch])
        trials += [attribute.trial(k, _removed(a, o, at, steps), steps) for k, o in zip(batch, outs)]
        if any(t.removed for t in trials):
            return trials
    if len(knobs) < 2:
        return trials
    say(Progress("no single piece removed it: trying them together"))
    (together,) = runs.run([runs.spec("c-all", "c", knobs)])
    if not _removed(a, together, at, steps):
        return trials
    outs = runs.run([runs.spec(f"c-all-but-{k}", "c", [x for x in knobs if x != k]) for k in knobs])
    return trials + [attribute.trial(k, not _removed(a, o, at, steps), steps,
                            "needed together with the other pieces" if not _removed(a, o, at, steps)
                            else "not needed once the others are restored")
            for k, o in zip(knobs, outs)]
