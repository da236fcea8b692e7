"""Running ``audit determinism``: the runs, then localization, then proof.

This module decides which runs to make and reads what they show; every run is a fresh process
that a :class:`audit.probes.run.launcher.Launcher` starts (``audit.probes.child.worker`` for a
target, ``audit.probes.child.bootstrap`` for a script; a distributed launcher's run is N ranks).

1. **Runs.** ``runs`` fresh processes train ``steps`` steps under matched seeds, each writing a
   trace (the first also scans its ops for CUDA nondeterminism). If all agree while a
   DataLoader's order may follow its workers' timing, they run again with that timing varied
   (:mod:`audit.probes.run.jitter`). If they agree, the audit ends here, listing the latent
   sources (the cost of a deterministic target is the runs themselves plus fingerprinting).
2. **Replay.** Two more fresh processes rerun in lockstep with module hooks, exchanging full
   tensors: they name the first module and measure how far apart the runs drift.
3. **Attribution.** Pairs of fresh processes rerun up to the divergent step with one knob
   flipped at a time; a knob is a proven cause when its pairs agree more often than chance
   allows (:mod:`audit.probes.determinism.proof`). If none does alone, all knobs together and
   then all-but-one say which are needed together.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from audit.probes.determinism import attribute, latent, proof, seeds
from audit.probes.run import compare
from audit.probes.determinism.cuda_ops_check import cite_scan
from audit.probes.progress import Reporter
from audit.probes.results import DeterminismResult, Divergence, GrowthPoint, RunInfo
from audit.probes.results.cuda_ops import CudaOpsScan
from audit.probes.run.escape_log import read_log
from audit.probes.run.processes import (Interrupted, last_words, parse_stack, user_frame)
from audit.probes.run.spec import LockstepSpec
from audit.probes.run.target import TargetError, check_target, label
from audit.probes.run.trace import read_trace
from audit.probes.run.launcher import Launcher, Outcome, RunOptions, TargetFailed
from audit.probes.run.machines import environment_changes
from audit.probes.results.records import Record, Status

def _in_step(out: Outcome) -> str:
    """Where a run was when it ended: loading the target, or in which step (0-based)."""
    if not out.records:
        return "while starting"
    if not out.env and not out.steps_done:
        return "while loading the target"
    return f"in step {out.steps_done}"


def _stopped_info(index: int, out: Outcome, timeout: Optional[float]) -> RunInfo:
    """A run the audit ended: it made no step for ``timeout`` seconds, or an interrupt came."""
    if out.stopped == Status.INTERRUPTED:
        message = f"ended by the interrupt {_in_step(out)}"
    else:
        frame = user_frame(parse_stack(out.stack))
        at = f" (at {frame.where} in {frame.function})" if frame else ""
        message = f"no training step for {timeout:g} s {_in_step(out)}{at}"
    return RunInfo(index=index, steps_completed=out.steps_done, status=out.stopped,
                   message=message, exit_code=None, seconds=round(out.seconds, 3),
                   stack=out.stack.strip() or None)


def _run_info(index: int, out: Outcome, timeout: Optional[float] = None) -> RunInfo:
    if out.stopped:
        return _stopped_info(index, out, timeout)
    end = out.end
    status = end.get("status")
    if status is None:  # it ended without its last record: os._exit, a signal, a fatal error
        code = out.exit_code
        assert code is not None  # a run not stopped has its exit status
        if code < 0:
            status, how = Status.KILLED, f"was killed by {_signal_name(-code)}"
        else:
            status, how = Status.EXITED, f"exited with status {code}"
        message = f"the process {how} {_in_step(out)} without a report" + last_words(out.output_tail)
    else:
        message = end.get("message", "")
        if end.get("where") and status != Status.EXITED:
            message += f" (at {end['where']})"
    return RunInfo(index=index, steps_completed=out.steps_done, status=status, message=message,
                   exit_code=end.get("exit_code", out.exit_code), seconds=round(out.seconds, 3))


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _run_error(info: RunInfo, out: Outcome, label: str) -> Optional[str]:
    """The one line a failed run gives the result's ``error`` (None: the run did not fail)."""
    if info.status == Status.TIMED_OUT:
        return f"{label} timed out: {info.message}; raise --timeout if a step can take longer"
    if info.status == Status.CRASHED:
        return f"{label} crashed after {info.steps_completed} steps: {info.message}"
    if not out.end and not out.stopped:  # exited or killed without its last record
        return f"{label}: {info.message}"
    return None


def _agree_through(a: Outcome, b: Outcome, step: int) -> bool:
    """Did a knob pair train alike through ``step`` (inclusive)? Crashes count as no proof."""
    if a.steps_done <= step or b.steps_done <= step:
        return False
    return compare.first_parting(a.records, b.records) is None


def _step_diffs(records: list[dict[str, Any]], step: Optional[int]) -> dict[str, Any]:
    kind = Record.INIT if step is None else Record.STEP
    return next((r.get("diffs") for r in records if r.get("type") == kind
                 and (step is None or r.get("step") == step)), None) or {}


def _magnitude(parting: compare.Parting, records: list[dict[str, Any]], module: Optional[str]) -> Optional[float]:
    """The largest difference the replay measured where the runs part: the stage's own tensor,
    else the stage's largest."""
    if parting.outside:
        assert parting.step is not None  # an outside parting is found between two steps
        found = _step_diffs(records, parting.step + 1).get("start") or {}
        return found.get(parting.tensor) or (max(found.values()) if found else None)
    diffs = _step_diffs(records, None if parting.stage == "init" else parting.step)
    if parting.stage == "data":
        return diffs.get(parting.field or parting.tensor or "inputs") or diffs.get(parting.tensor or "inputs")
    if parting.stage == "forward":
        outputs = diffs.get("outputs") or {}
        if module is not None and outputs.get(f"{module}#0"):
            return outputs[f"{module}#0"]
        return max(outputs.values()) if outputs else None
    key = {"backward": "grads", "optimizer": "params", "init": "params"}.get(parting.stage)
    found = diffs.get(key) or {} if key else {}
    # The replay may part in another tensor of the same stage: then the stage's largest.
    return found.get(parting.tensor) or (max(found.values()) if found else None)


def _any_magnitude(records: list[dict[str, Any]], step: Optional[int]) -> Optional[float]:
    """The largest difference measured at a step in any tensor (for a stage whose own tensors
    the replay could not compare, e.g. the RNG state)."""
    diffs = _step_diffs(records, step)
    values = [v for k, v in diffs.items() if k != "param_total" and isinstance(v, (int, float))]
    values += [x for k, v in diffs.items() if isinstance(v, dict) and k != "param_total"
               for x in v.values()]
    return max(values) if values else None


def _measured(result: DeterminismResult, parting: compare.Parting, replay: list[Any],
              module: Optional[str]) -> Optional[float]:
    magnitude = _magnitude(parting, replay[1].records, module)
    if magnitude is None and parting.stage != "init":
        magnitude = _any_magnitude(replay[1].records, parting.step)
        if magnitude is not None:
            result.detail["max_abs_diff"] = ("the largest difference the replay measured at this "
                                             "step (the stage's own tensors were not compared)")
    return magnitude


@dataclass
class _State:
    """How far an audit got: what an interrupt's partial result is made from."""

    runs: list[Any] = field(default_factory=list)  # the specs of the first, compared runs
    result: Optional[DeterminismResult] = None


def _localize(parting: compare.Parting, again: Optional[compare.Parting],
              replay: list[Any]) -> tuple[Any, ...]:
    """(module, tensor, note) for a forward or backward parting, from the replay's module-level
    fingerprints: where the replay parted at the same stage (its step may differ), else at the
    original step, where the replay's records may show the same stage differing."""
    if parting.stage not in ("forward", "backward"):
        return None, None, None
    assert parting.step is not None  # a forward or backward parting is at a step
    places: list[tuple[int, str]] = []
    if again is not None and again.stage == parting.stage:
        assert again.step is not None  # so is the replay's, at the same stage
        places.append((again.step, again.stage))
    places.append((parting.step, parting.stage))
    for step, stage in dict.fromkeys(places):
        module, tensor = compare.localize(replay[0].records, replay[1].records, step, stage)
        if module is not None:
            note = None if step == parting.step else (
                f"the replay parted at step {step} ({stage}); the module is named from there")
            return module, tensor, note
    return None, None, None


def audit_determinism(opts: RunOptions, progress: Reporter = None,
                      keep: Optional[str] = None,
                      launcher: Optional[Callable[..., Launcher]] = None) -> DeterminismResult:
    """Run the whole audit; raises :class:`TargetFailed` when the target cannot be loaded.
    ``launcher(opts, folder, progress)`` makes the :class:`Launcher` (distributed runs pass
    their own).

    An :class:`~audit.probes.run.processes.Interrupted` raised while it runs (the CLI's signal handler)
    ends every run and goes on up with ``partial``: the result of what was measured so far.
    """
    started = time.monotonic()
    if not opts.script:
        try:
            check_target(opts.target, opts.cwd)
        except TargetError as exc:
            raise TargetFailed(str(exc)) from None
    folder = keep or tempfile.mkdtemp(prefix="audit-determinism-")
    runs, state = (launcher or Launcher)(opts, folder, progress), _State()
    try:
        return _audit(opts, runs, state, started)
    except Interrupted as exc:
        exc.partial = _partial(opts, runs, state, exc, started)
        raise
    finally:
        runs.close()
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)


def _partial(opts: RunOptions, launcher: Launcher, state: _State, exc: Interrupted,
             started: float) -> Optional[DeterminismResult]:
    """The result of what was measured before the interrupt (None: nothing was)."""
    result = state.result
    if result is None:
        outs = [Outcome(spec.name, read_trace(spec.trace), None, time.monotonic() - started,
                        read_log(spec.escape_log), "", Status.INTERRUPTED) for spec in state.runs]
        if not any(o.steps_done for o in outs):
            return None
        result, _, _ = _first_result(opts, outs)
    result.error = (f"interrupted by {exc.name} while {launcher.phase}: the report covers "
                    "only what was measured before it")
    result.seconds = round(time.monotonic() - started, 3)
    return result


def _first_result(opts: RunOptions, outs: list[Any]) -> tuple[Any, Any, Any]:
    """The result of the compared runs alone: runs, timeline, escapes, non-finite values,
    and the first parting (None: they agree). Returns ``(result, parting, env)``."""
    env: dict[str, Any] = next((o.env for o in outs if o.env), {})
    device = (env.get("environment") or {}).get("device", opts.device)
    infos = [_run_info(i, o, opts.timeout) for i, o in enumerate(outs)]
    result = DeterminismResult(
        verdict="deterministic", runs=opts.runs, steps=opts.steps, seed=opts.seed,
        device=device, environment=env.get("environment", {}),
        target=" ".join(opts.script) if opts.script else label(opts.target),
        mode="script" if opts.script else "target", run_info=infos,
        timeline=compare.timeline([o.records for o in outs]),
        nonfinite=compare.first_nonfinite([o.records for o in outs]),
    )
    if env.get("description"):
        result.detail["data"] = env["description"]
    if env.get("counting"):
        result.detail["steps_counted"] = {"optimizer": "optimizer steps",
                                          "backward": "backward passes"}[env["counting"]]
    errors = [_run_error(i, o, f"run {i.index}") for i, o in zip(infos, outs)]
    result.error = next((e for e in errors if e), None)
    result.rng_escapes = attribute.escapes_from([e for o in outs for e in o.escapes])
    result.varying_seeds = seeds.varying([o.seeds for o in outs],
                                         {e.where for e in result.rng_escapes})
    scans = [r["scan"] for r in outs[0].records if r.get("type") == Record.CUDA_OPS]
    result.cuda_ops = CudaOpsScan.from_dict(scans[0]) if scans else None
    compared = [o for o in outs if o.stopped != Status.INTERRUPTED or o.steps_done]  # started ones
    parting = compare.earliest([compare.first_parting(compared[0].records, o.records)
                                for o in compared[1:]]) if len(compared) > 1 else None
    if parting is None:
        latent = compare.rng_only([o.records for o in outs])
        if latent:
            result.detail["latent_rng"] = (
                f"the RNG state differs between runs from step {latent[0]}, but nothing the "
                "training computes depends on it within these steps")
        if result.varying_seeds:
            result.detail["varying_seeds"] = (
                "seeding calls got other values in each run ("
                + ", ".join(f"{c.kind} at {c.where}" for c in result.varying_seeds)
                + "), but these steps agreed")
    else:
        result.verdict = "nondeterministic"
    return result, parting, env


def _audit(opts: RunOptions, launcher: Launcher, state: _State,
           started: float) -> DeterminismResult:
    # The first run also scans its ops for CUDA nondeterminism (target mode: one extra pass;
    # script mode: its second step, recorded as it trains).
    state.runs = [launcher.spec(f"run{i}", opts.steps,
                                cuda_ops=i == 0 and opts.cuda_ops)
                  for i in range(opts.runs)]
    outs = launcher.run_all(state.runs, opts.jobs,
                            phase=f"runs ({opts.runs} x {_plural(opts.steps, 'step')})")
    for out in outs:
        if out.end.get("status") == Status.TARGET_ERROR:
            raise TargetFailed(out.end.get("message", "the target could not be loaded"))
    result, parting, env = _first_result(opts, outs)
    if opts.across_nodes:
        annotate_nodes(result, outs, parting is not None)
    launcher.pin_sites = [c.where for c in result.varying_seeds]
    state.result = result
    observed = _observed(outs)
    if parting is None and not launcher.stalled and latent.can_act(observed):
        parting, outs = _jitter(opts, launcher, result, outs)
    if parting is None:
        result.latent_sources = latent.sources(observed, attribute.drawn(result.rng_escapes),
                                               result.device, jittered=launcher.jitter_tried)
    elif not launcher.stalled:  # a replay would hang as the run did
        _explain(opts, launcher, result, parting, outs, env, observed)
    if launcher.stalled and not result.error:
        info = _run_info(0, launcher.stalled[0], opts.timeout)
        result.error = _run_error(info, launcher.stalled[0], f"run {launcher.stalled[0].name}")
    result.seconds = round(time.monotonic() - started, 3)
    return result


def annotate_nodes(result: DeterminismResult, outs: list[Outcome], parted: bool) -> None:
    """``--across-nodes``: the node each compared run ran on, with its environment; when the
    runs part, how the first run's node differs from the first other node's; when they agree,
    on which machines."""
    result.nodes = [{"run": i, "node": o.node, "environment": o.env.get("environment", {})}
                    for i, o in enumerate(outs)]
    names = list(dict.fromkeys(o.node for o in outs))
    other = next((o for o in outs[1:] if o.node != outs[0].node), None)
    if parted and other is not None:
        changes = environment_changes(outs[0].env.get("environment", {}),
                                      other.env.get("environment", {}))
        result.environment_changes = [dataclasses.asdict(c) for c in changes]
    elif not parted:
        result.detail["nodes"] = (f"the runs agreed on {len(names)} machine"
                                  f"{'' if len(names) == 1 else 's'}: {', '.join(names)}")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _observed(outs: list[Any]) -> dict[str, Any]:
    """What the runs' knob observers saw (loaders, thread counts, cuDNN autotuning)."""
    observed: dict[str, Any] = {}
    for o in outs:
        for key, value in (o.end.get("observed") or {}).items():
            if value and not observed.get(key):
                observed[key] = value
    return observed


def _plain_runs(opts: RunOptions, launcher: Launcher, name: str, phase: str) -> list[Any]:
    specs = [launcher.spec(f"{name}{i}", opts.steps) for i in range(opts.runs)]
    return launcher.run_all(specs, opts.jobs, phase=phase)


def _jitter(opts: RunOptions, launcher: Launcher, result: DeterminismResult,
            outs: list[Any]) -> tuple[Any, ...]:
    """The runs agreed, but a loader's batch order depends on its workers' timing: rerun with
    that timing varied. Returns ``(parting, outs)``: the new runs where they part."""
    launcher.jitter = True
    more = _plain_runs(opts, launcher, "jitter", "rerunning with varied DataLoader worker timing")
    parting = compare.earliest([compare.first_parting(outs[0].records, o.records) for o in more])
    if parting is None:
        launcher.jitter = False
        return None, outs
    outs = [outs[0], *more]
    result.verdict = "nondeterministic"
    for key in ("latent_rng", "varying_seeds"):
        result.detail.pop(key, None)
    result.detail["jitter"] = latent.JITTER_NOTE
    result.run_info = [_run_info(i, o, opts.timeout) for i, o in enumerate(outs)]
    result.runs = len(outs)
    result.timeline = compare.timeline([o.records for o in outs])
    return parting, outs


def _explain(opts: RunOptions, launcher: Launcher, result: DeterminismResult,
             parting: compare.Parting, outs: list[Any], env: dict[str, Any], observed: dict[str, Any]) -> None:
    """Localize the first parting (the replay) and prove its causes (the knob trials)."""
    if parting.data:
        result.detail["data_difference"] = parting.data
    if parting.streams:
        result.detail["rng_streams"] = parting.streams
    module, replay = _replay(opts, launcher, result, parting)
    controls = [o.records for o in outs] + [r.records for r in replay]
    reproduced = compare.first_parting(replay[0].records, replay[1].records) is not None
    if not reproduced:
        plain = _plain_runs(opts, launcher, "again", "the replay agreed: repeating the plain runs")
        controls += [o.records for o in plain]
        reproduced = compare.earliest([compare.first_parting(plain[0].records, o.records)
                                       for o in plain[1:]]) is not None
        result.detail["replay"] = INTERMITTENT[reproduced]
    module_where = _module_where(env.get("module_sources", {}), module)
    trials = []
    if opts.attribute:
        upto = 0 if parting.step is None else parting.step
        plan = attribute.plan(parting, result.device, attribute.drawn(result.rng_escapes), observed,
                              {"PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED"),
                               "flags": result.environment.get("flags", {})},
                              varying=result.varying_seeds)
        upto, chance = proof.horizon(controls, upto, parting.stage)
        trials = _try_knobs(launcher, plan, upto, opts, chance, result.device)
    result.knob_trials = trials
    result.causes = attribute.causes(parting, trials, attribute.drawn(result.rng_escapes),
                                     observed, module, module_where, reproduced=reproduced,
                                     varying=result.varying_seeds)
    cite_scan(result.causes, result.cuda_ops, module)


#: What the audit says when the replay did not part again: keyed by whether the plain runs,
#: repeated as first made, parted again.
INTERMITTENT = {
    True: ("the replay (two runs side by side, with module hooks) did not part again, but the "
           "plain runs did when repeated: the difference depends on how the runs are started "
           "(e.g. a seed from the clock, alike for runs started together)"),
    False: "neither the replay nor the plain runs, repeated, parted again: the divergence is intermittent",
}


def _module_where(module_sources: dict[str, Any], module: Optional[str]) -> Optional[str]:
    """Where the module (or the nearest enclosing one) was made, in the user's code."""
    if module is None:
        return None
    return module_sources.get(module) or next(
        (module_sources[m] for m in sorted(module_sources, key=len, reverse=True)
         if module.startswith(m + ".") or m == ""), None)


def _replay(opts: RunOptions, launcher: Launcher, result: DeterminismResult,
            parting: compare.Parting) -> tuple[Any, ...]:
    """Replay in lockstep: the module, and the magnitudes. Returns ``(module, replay)``."""
    folder = os.path.join(launcher.folder, "lockstep")
    replay = launcher.run_all(
        [launcher.spec("replay-ref", opts.steps, detail=True, lockstep=LockstepSpec(folder, "ref")),
         launcher.spec("replay-cmp", opts.steps, detail=True, lockstep=LockstepSpec(folder, "cmp"))],
        jobs=2, phase="replaying to localize")
    again = compare.first_parting(replay[0].records, replay[1].records)
    module, found_tensor, note = _localize(parting, again, replay)
    tensor = found_tensor or parting.tensor
    if note:
        result.detail["replay"] = note
    if again is not None and again.key() < parting.key() and module is None:
        result.detail["replay"] = f"the replay parted earlier, at step {again.step} ({again.stage})"
    if parting.outside:
        assert parting.step is not None  # an outside parting is found between two steps
        module = (tensor or "").rpartition(".")[0] or None
        result.detail["outside_optimizer"] = (
            f"parameters changed outside the optimizer: {tensor} agrees after the update of "
            f"step {parting.step} and differs at the start of step {parting.step + 1}")
    result.first_divergence = Divergence(step=parting.step, stage=parting.stage, module=module,
                                         tensor=tensor,
                                         max_abs_diff=_measured(result, parting, replay, module))
    if parting.stage == "data" and parting.data == "order":
        result.detail["data"] = "the same samples arrived in another order"
    for r in replay[1].records:
        total = (r.get("diffs") or {}).get("param_total")
        if r.get("type") == Record.STEP and total:
            result.growth.append(GrowthPoint(step=r["step"], max_abs_diff=total["max_abs"],
                                             rel_l2=total["rel_l2"]))
    return module, replay


def _pair_removed(launcher: Launcher, knobs: list[list[str]], upto: int, opts: RunOptions) -> list[Any]:
    specs = []
    for knob_set in knobs:
        label = "+".join(knob_set) or "control"
        specs += [launcher.spec(f"knob-{label}-a", upto + 1, knobs=knob_set),
                  launcher.spec(f"knob-{label}-b", upto + 1, knobs=knob_set)]
    phase = ("knob trial: " + (" + ".join(knobs[0]) or "control") if len(set(map(tuple, knobs))) == 1
             else f"knob trials: {len(knobs)} sets of knobs")
    outs = launcher.run_all(specs, jobs=max(2, opts.jobs), phase=phase)
    return [_agree_through(outs[2 * i], outs[2 * i + 1], upto) for i in range(len(knobs))]


def _try_knobs(launcher: Launcher, plan: list[Any], upto: int, opts: RunOptions,
               chance: proof.Chance, device: str) -> list[Any]:
    """:func:`probes.determinism.proof.search` with pairs of fresh processes."""
    def run_pairs(knobs: list[str], count: int) -> list[Any]:
        return _pair_removed(launcher, [knobs] * count, upto, opts)

    return proof.search(plan, chance, device, run_pairs, upto + 1)
