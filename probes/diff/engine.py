"""Running ``audit diff`` and ``audit record`` on the runs every engine shares
(:mod:`audit.probes.run`: the launcher, the trace comparison, the lockstep replay).

* ``diff A B``: both sides train under the same seed in fresh processes (plain traces, side by
  side). Modules are matched across renames, side a's trace is put into side b's names, and
  the determinism comparison finds the first step and stage where they part. Identical sides
  end there: the cost is the two runs. When they part, both sides are replayed in lockstep in
  detail (module events, full tensors exchanged): the replays name the module and measure
  how far apart the sides are, and, being reruns, tell whether a side disagrees with itself at
  or before the first difference (``nondeterministic``).
* ``diff --against FILE``: the reference (a recorded detail trace) is side a; side b trains
  once; when they part, side b reruns in detail to name the module and to check itself.
* ``record``: the target trains twice in detail; a target that disagrees with itself is
  refused, else one trace becomes the reference.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Optional

from audit.probes.run import compare
from audit.probes.run.launcher import Launcher, Outcome, RunOptions, TargetFailed
from audit.probes.diff import measure, traces
from audit.probes.diff.match import Matching, match
from audit.probes.diff.reference import Reference
from audit.probes.progress import Progress, Reporter, silent
from audit.probes.run.spec import LockstepSpec
from audit.probes.run.target import label
from audit.probes.results.diff import (DiffResult, DiffSide, Difference, RecordResult, Rename,
                                       Replaced, SelfDifference, Unmatched)
from audit.probes.results.records import Record, Status


@dataclass
class DiffOptions:
    """One side's target (or script) per side; ``a`` is before, ``b`` after."""

    target_a: Optional[str] = None
    target_b: Optional[str] = None
    script_a: Optional[list[Any]] = None
    script_b: Optional[list[Any]] = None
    steps: int = 8
    seed: int = 0
    device: str = "auto"
    input_shape: Optional[list[Any]] = None
    num_classes: Optional[int] = None
    cwd: Optional[str] = None
    executor: str = "local"  # where the plain runs execute (the lockstep pairs: here)
    ray_address: Optional[str] = None


def _launcher(opts: DiffOptions, folder: str, side: str) -> Launcher:
    target, script = (opts.target_a, opts.script_a) if side == "a" else (opts.target_b, opts.script_b)
    det = RunOptions(target=target, steps=opts.steps, seed=opts.seed, device=opts.device,
                             input_shape=opts.input_shape, num_classes=opts.num_classes,
                             script=script, cwd=opts.cwd, executor=opts.executor,
                             ray_address=opts.ray_address)
    return Launcher(det, folder)


def _label(opts: RunOptions) -> str:
    return " ".join(opts.script) if opts.script else label(opts.target)


def _side(opts: RunOptions, env: dict[str, Any]) -> DiffSide:
    """A side as its ``env`` record describes it: environment and code fingerprint."""
    return DiffSide(_label(opts), env.get("environment", {}),
                    "script" if opts.script else "target", env.get("code"))


def _checked(outs: list[Any], launchers: list[Any]) -> list[Any]:
    """Raise :class:`TargetFailed` (one line) when a side's target cannot be loaded."""
    for out, launcher in zip(outs, launchers):
        if out.end.get("status") == Status.TARGET_ERROR:
            message = out.end.get("message", "the target could not be loaded")
            raise TargetFailed(f"{_label(launcher.opts)}: {message}")
    return outs


def _crash(side: str, out: Outcome, steps: int) -> Optional[str]:
    end = out.end
    if end.get("status") in (Status.OK, Status.ENDED_EARLY, Status.EXITED) and out.steps_done >= steps:
        return None
    message = end.get("message") or f"the process ended with status {out.exit_code}"
    if end.get("where"):
        message += f" (at {end['where']})"
    return f"side {side} stopped after {out.steps_done} of {steps} steps: {message}"


def _workspace(keep: Optional[str]) -> str:
    return keep or tempfile.mkdtemp(prefix="audit-diff-")


def diff(opts: DiffOptions, progress: Reporter = None,
         keep: Optional[str] = None) -> DiffResult:
    """Compare two targets; raises :class:`TargetFailed` when one cannot be loaded."""
    started, say = time.monotonic(), progress or silent
    folder = _workspace(keep)
    try:
        la, lb = _launcher(opts, folder, "a"), _launcher(opts, folder, "b")
        say(Progress(f"2 sides x {opts.steps} steps"))
        a, b = _checked(la.run_all([la.spec("a-run", opts.steps), lb.spec("b-run", opts.steps)], 2),
                        [la, lb])
        side_a, side_b = _side(la.opts, a.env), _side(lb.opts, b.env)
        m = match(compare.split(a.records)[0], compare.split(b.records)[0])
        result = _base(opts, side_a, side_b, m, a.records, b.records, "pair")
        result.error = _crash("a", a, opts.steps) or _crash("b", b, opts.steps)
        parting = compare.first_parting(traces.translate(traces.plain(a.records), m, _header(b)),
                                        traces.plain(b.records))
        if parting is not None:
            say(Progress("replaying both sides to localize"))
            _explain_pair(result, parting, m, (la, lb), (a, b), folder)
        result.seconds = round(time.monotonic() - started, 3)
        return result
    finally:
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)


def _header(out: Outcome) -> dict[str, Any]:
    return compare.split(out.records)[0]


def _base(opts: Any, side_a: DiffSide, side_b: DiffSide, m: Matching, rec_a: list[Any], rec_b: list[Any],
          mode: str) -> DiffResult:
    device = side_b.environment.get("device") or side_a.environment.get("device") or opts.device
    result = DiffResult(
        verdict="identical", steps=opts.steps, seed=opts.seed, a=side_a, b=side_b,
        environment_changes=measure.environment_changes(side_a.environment, side_b.environment),
        renamed=[Rename(source=x, to=y) for x, y in m.renamed],
        loss=measure.loss_curves(traces.losses(rec_a), traces.losses(rec_b)),
        device=device, mode=mode,
        replaced=[Replaced(*r) for r in m.replaced],
        unmatched=Unmatched(a=list(m.unmatched_a), b=list(m.unmatched_b)))
    result.timeline = compare.timeline([traces.translate(traces.plain(rec_a), m, compare.split(rec_b)[0]),
                                        traces.plain(rec_b)])
    measure.add_loss_column(result.timeline)
    return result


def _explain_pair(result: DiffResult, parting: Any, m: Matching, launchers: tuple[Any, ...], outs: tuple[Any, ...],
                  folder: str) -> None:
    la, lb = launchers
    lock = os.path.join(folder, "lockstep")
    rename = {"params": m.params, "modules": m.modules}
    replay = la.run_all([
        la.spec("a-replay", result.steps, detail=True,
                lockstep=LockstepSpec(lock, "ref", rename=rename)),
        lb.spec("b-replay", result.steps, detail=True, lockstep=LockstepSpec(lock, "cmp"))], 2)
    selves = [("a", outs[0].records, replay[0].records), ("b", outs[1].records, replay[1].records)]
    _conclude(result, parting, m, replay[0].records, replay[1].records, selves)


def _conclude(result: DiffResult, parting: Any, m: Matching, detail_a: list[Any], detail_b: list[Any],
              selves: list[Any]) -> None:
    """The verdict, the place (module named by side b) and the magnitudes, from the detail
    traces of both sides; ``selves`` pairs each rerun side with its first run."""
    result.verdict = "differs"
    translated = traces.translate(detail_a, m, compare.split(detail_b)[0])
    stage, module, tensor = measure.place(parting, translated, detail_b)
    owner = module if module is not None else measure.owner_of(tensor, compare.split(detail_b)[0])
    result.first_difference = Difference(
        step=parting.step, stage=stage, module=owner, tensor=tensor,
        max_abs_diff=measure.magnitude(parting.step, stage, owner, tensor, detail_b, result.loss),
        module_a=m.module_a(owner) if owner is not None else None,
        tensor_a=m.param_a(tensor) if tensor else None)
    if stage == "loss":
        measure.mark_loss(result.timeline, parting.step)
    result.growth = measure.growth(detail_b)
    result.drift = measure.drift(result.loss, result.growth)
    for side, first, again in selves:
        own = compare.first_parting(traces.plain(first), traces.plain(again))
        if own is not None and own.key() <= parting.key():
            result.verdict = "nondeterministic"
            result.self_difference = SelfDifference(side=side, step=own.step, stage=own.stage)
            break


def diff_against(ref: Reference, opts: DiffOptions, progress: Reporter = None,
                 keep: Optional[str] = None) -> DiffResult:
    """Compare side b (``opts.target_b`` or ``opts.script_b``) with a recorded reference;
    steps, seed, device and the synthetic-data shape come from the reference."""
    started, say = time.monotonic(), progress or silent
    opts = DiffOptions(target_b=opts.target_b, script_b=opts.script_b, steps=ref.steps, seed=ref.seed,
                       device=ref.device, input_shape=ref.input_shape, num_classes=ref.num_classes,
                       cwd=opts.cwd, executor=opts.executor, ray_address=opts.ray_address)
    folder = _workspace(keep)
    try:
        lb = _launcher(opts, folder, "b")
        say(Progress(f"1 run x {opts.steps} steps against the reference"))
        (b,) = _checked(lb.run_all([lb.spec("b-run", opts.steps)], 1), [lb])
        env_a: dict[str, Any] = next((r for r in ref.records if r.get("type") == Record.ENV), {})
        side_a = DiffSide(ref.target, ref.environment, "reference", env_a.get("code"))
        side_b = _side(lb.opts, b.env)
        m = match(compare.split(ref.records)[0], _header(b))
        result = _base(opts, side_a, side_b, m, ref.records, b.records, "against")
        result.error = _crash("b", b, opts.steps)
        parting = compare.first_parting(traces.translate(traces.plain(ref.records), m, _header(b)),
                                        traces.plain(b.records))
        if parting is not None:
            say(Progress("rerunning in detail to localize"))
            (again,) = lb.run_all([lb.spec("b-replay", opts.steps, detail=True)], 1)
            _conclude(result, parting, m, ref.records, again.records, [("b", b.records, again.records)])
        result.seconds = round(time.monotonic() - started, 3)
        return result
    finally:
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)


def record(opts: DiffOptions, progress: Reporter = None,
           keep: Optional[str] = None) -> tuple[Any, ...]:
    """Train side a (``opts.target_a`` / ``opts.script_a``) twice in detail: returns the
    :class:`RecordResult` and the :class:`Reference` (None when the runs disagree)."""
    started, say = time.monotonic(), progress or silent
    folder = _workspace(keep)
    try:
        la = _launcher(opts, folder, "a")
        say(Progress(f"2 runs x {opts.steps} steps"))
        specs = [la.spec(f"record{i}", opts.steps, detail=True) for i in range(2)]
        first, second = _checked(la.run_all(specs, 2), [la, la])
        env = first.env.get("environment", {})
        result = RecordResult(verdict="recorded", target=_label(la.opts), steps=opts.steps,
                              seed=opts.seed, device=env.get("device", opts.device))
        crashed = _crash("a", first, opts.steps) or _crash("a", second, opts.steps)
        if crashed:
            raise TargetFailed(crashed.replace("side a", "the target", 1))
        own = compare.first_parting(first.records, second.records)
        result.seconds = round(time.monotonic() - started, 3)
        if own is not None:
            result.verdict = "nondeterministic"
            result.self_difference = SelfDifference(side="a", step=own.step, stage=own.stage)
            return result, None
        ref = Reference(target=result.target, steps=opts.steps, seed=opts.seed, device=result.device,
                        records=_kept(first.records),
                        environment=env, losses=traces.losses(first.records),
                        mode="script" if opts.script_a else "target", script=opts.script_a,
                        input_shape=opts.input_shape, num_classes=opts.num_classes)
        return result, ref
    finally:
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)


def _kept(records: list[dict[str, Any]]) -> list[Any]:
    """What a reference keeps of a detail trace: everything but timings and lockstep data."""
    return [{k: v for k, v in r.items() if k not in ("seconds", "diffs", "traceback")} for r in records]
