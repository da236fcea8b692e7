"""Running ``audit determinism``: fresh processes, then localization, then proof.

1. **Runs.** ``runs`` fresh worker processes train ``steps`` steps under matched seeds, each
   writing a trace. If all agree, the audit ends here (the cost of a deterministic target is
   the runs themselves plus fingerprinting).
2. **Replay.** Two more fresh processes rerun in lockstep with module hooks, exchanging full
   tensors: they name the first module and measure how far apart the runs drift.
3. **Attribution.** Pairs of fresh processes rerun up to the divergent step with one knob
   flipped at a time; a knob that makes the pair agree is a proven cause. If none does alone,
   all knobs together and then all-but-one say which are needed together.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from audit.probes import seed_log
from audit.probes.determinism import attribute, compare, seeds
from audit.probes.determinism.cuda_ops_check import cite_scan
from audit.probes.determinism.knobs import KNOBS
from audit.probes.results import DeterminismResult, Divergence, GrowthPoint, RunInfo
from audit.probes.results.cuda_ops import CudaOpsScan
from audit.probes.rng_escape import read_log
from audit.probes.trace import read_trace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TargetFailed(Exception):
    """A run could not load or call the target (exit status 2), with the worker's message."""


@dataclass
class DeterminismOptions:
    target: Optional[str] = None
    runs: int = 2
    steps: int = 20
    seed: int = 0
    device: str = "auto"
    input_shape: Optional[list] = None
    num_classes: Optional[int] = None
    jobs: int = 1
    attribute: bool = True
    script: Optional[list] = None  # script mode: ["python", "train.py", ...]
    cuda_ops: bool = True  # scan the first run's ops for CUDA nondeterminism
    cwd: Optional[str] = None


@dataclass
class Outcome:
    """One finished worker process."""

    name: str
    records: list
    exit_code: int
    seconds: float
    escapes: list = field(default_factory=list)
    output_tail: str = ""
    seeds: list = field(default_factory=list)  # the seeding calls it logged

    @property
    def end(self) -> dict:
        return next((r for r in reversed(self.records) if r.get("type") == "end"), {})

    @property
    def env(self) -> dict:
        return next((r for r in self.records if r.get("type") == "env"), {})

    @property
    def steps_done(self) -> int:
        return sum(1 for r in self.records if r.get("type") == "step")


class Launcher:
    """Starts worker processes with specs and environments, and collects their traces."""

    def __init__(self, opts: DeterminismOptions, folder: str):
        self.opts, self.folder = opts, folder
        self.count = 0
        self.pin_sites: list = []  # the seeding calls the pin_seeds knob pins

    def spec(self, name: str, steps: int, knobs=(), detail=False, lockstep=None,
             extra: Optional[dict] = None, cuda_ops: bool = False) -> dict:
        """A worker spec, written to the folder; ``extra`` adds keys (e.g. ``resume``)."""
        self.count += 1
        base = os.path.join(self.folder, f"{self.count:03d}-{name}")
        spec = {
            "name": name, "trace": base + ".trace", "escape_log": base + ".escapes",
            "target": self.opts.target, "seed": self.opts.seed, "steps": steps,
            "device": self.opts.device, "input_shape": self.opts.input_shape,
            "num_classes": self.opts.num_classes, "knobs": list(knobs), "detail": detail,
            "lockstep": lockstep, "script": self.opts.script, "log": base + ".log",
            "seed_log": base + ".seeds", "pin_sites": self.pin_sites,
            **(extra or {}),
            "cuda_ops": cuda_ops,
        }
        with open(base + ".json", "w", encoding="utf-8") as fh:
            json.dump(spec, fh)
        spec["spec_path"] = base + ".json"
        return spec

    def _env(self, knobs) -> dict:
        env = dict(os.environ)
        for knob in knobs:
            env.update(KNOBS[knob].env)
        path = env.get("PYTHONPATH")
        env["PYTHONPATH"] = ROOT + (os.pathsep + path if path else "")
        env.setdefault("MPLBACKEND", "Agg")
        return env

    def start(self, spec: dict) -> tuple:
        log = open(spec["log"], "wb")
        if spec.get("script"):
            from audit.probes import script_runner

            argv = script_runner.command(spec)
        else:
            argv = [sys.executable, "-m", "audit.probes.worker", spec["spec_path"]]
        proc = subprocess.Popen(argv, env=self._env(spec["knobs"]), cwd=self.opts.cwd,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        return proc, log, time.monotonic()

    def finish(self, spec: dict, proc, log, started: float) -> Outcome:
        code = proc.wait()
        log.close()
        with open(spec["log"], "rb") as fh:
            tail = fh.read()[-4000:].decode("utf-8", "replace")
        return Outcome(spec["name"], read_trace(spec["trace"]), code,
                       time.monotonic() - started, read_log(spec["escape_log"]), tail,
                       seed_log.read(spec["seed_log"]))

    def run_all(self, specs: list, jobs: int, on_done: Optional[Callable] = None) -> list:
        """Run specs with at most ``jobs`` at a time; lockstep partners always together."""
        results: dict = {}
        pending = list(range(len(specs)))
        running: list = []
        while pending or running:
            while pending and (len(running) < max(jobs, 1) or specs[pending[0]].get("lockstep")):
                i = pending.pop(0)
                running.append((i, *self.start(specs[i])))
            for item in list(running):
                i, proc, log, started = item
                if proc.poll() is not None:
                    running.remove(item)
                    results[i] = self.finish(specs[i], proc, log, started)
                    if on_done:
                        on_done()
            time.sleep(0.02)
        return [results[i] for i in range(len(specs))]


def _run_info(index: int, out: Outcome, steps: int) -> RunInfo:
    end = out.end
    status = end.get("status")
    if status is None:
        status = "killed" if out.exit_code < 0 else "crashed"
        message = f"the process ended with status {out.exit_code} and no report; output:\n{out.output_tail[-800:]}"
    else:
        message = end.get("message", "")
        if end.get("where"):
            message += f" (at {end['where']})"
    if status == "exited":
        message = end.get("message", "")
    return RunInfo(index=index, steps_completed=out.steps_done, status=status, message=message,
                   exit_code=end.get("exit_code", out.exit_code), seconds=round(out.seconds, 3))


def _agree_through(a: Outcome, b: Outcome, step: int) -> bool:
    """Did a knob pair train alike through ``step`` (inclusive)? Crashes count as no proof."""
    if a.steps_done <= step or b.steps_done <= step:
        return False
    return compare.first_parting(a.records, b.records) is None


def _magnitude(parting: compare.Parting, records: list, module: Optional[str]) -> Optional[float]:
    if parting.stage == "init":
        diffs = next((r.get("diffs") for r in records if r.get("type") == "init"), None)
    else:
        diffs = next((r.get("diffs") for r in records
                      if r.get("type") == "step" and r.get("step") == parting.step), None)
    if not diffs:
        return None
    if parting.stage == "data":
        return diffs.get(parting.tensor or "inputs")
    if parting.stage == "forward" and module is not None:
        return (diffs.get("outputs") or {}).get(f"{module}#0")
    key = {"backward": "grads", "optimizer": "params", "init": "params"}.get(parting.stage)
    if key is None:
        return None
    found = diffs.get(key) or {}
    # The replay may part in another tensor of the same stage: then the stage's largest.
    return found.get(parting.tensor) or (max(found.values()) if found else None)


def _localize(parting: compare.Parting, again: Optional[compare.Parting],
              replay: list) -> tuple:
    """(module, tensor, note) for a forward or backward parting, from the replay's module-level
    fingerprints: where the replay parted at the same stage (its step may differ), else at the
    original step, where the replay's records may show the same stage differing."""
    if parting.stage not in ("forward", "backward"):
        return None, None, None
    places = []
    if again is not None and again.stage == parting.stage:
        places.append((again.step, again.stage))
    places.append((parting.step, parting.stage))
    for step, stage in dict.fromkeys(places):
        module, tensor = compare.localize(replay[0].records, replay[1].records, step, stage)
        if module is not None:
            note = None if step == parting.step else (
                f"the replay parted at step {step} ({stage}); the module is named from there")
            return module, tensor, note
    return None, None, None


def audit_determinism(opts: DeterminismOptions, progress: Optional[Callable[[str], None]] = None,
                      keep: Optional[str] = None,
                      launcher: Optional[Callable] = None) -> DeterminismResult:
    """Run the whole audit; raises :class:`TargetFailed` when the target cannot be loaded.
    ``launcher(opts, folder)`` makes the :class:`Launcher` (distributed runs pass their own)."""
    started = time.monotonic()
    folder = keep or tempfile.mkdtemp(prefix="audit-determinism-")
    say = progress or (lambda msg: None)
    try:
        return _audit(opts, (launcher or Launcher)(opts, folder), say, started)
    finally:
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)


def _audit(opts: DeterminismOptions, launcher: Launcher, say, started: float) -> DeterminismResult:
    say(f"{opts.runs} runs x {opts.steps} steps")
    # The first run also scans its ops for CUDA nondeterminism (target mode; one extra pass).
    specs = [launcher.spec(f"run{i}", opts.steps, cuda_ops=i == 0 and opts.cuda_ops and not opts.script)
             for i in range(opts.runs)]
    outs = launcher.run_all(specs, opts.jobs, on_done=lambda: say("run finished"))

    for out in outs:
        if out.end.get("status") == "target_error":
            raise TargetFailed(out.end.get("message", "the target could not be loaded"))

    env = next((o.env for o in outs if o.env), {})
    device = (env.get("environment") or {}).get("device", opts.device)
    infos = [_run_info(i, o, opts.steps) for i, o in enumerate(outs)]
    result = DeterminismResult(
        verdict="deterministic", runs=opts.runs, steps=opts.steps, seed=opts.seed,
        device=device, environment=env.get("environment", {}),
        target=" ".join(opts.script) if opts.script else (opts.target or "audit.example:build (built-in)"),
        mode="script" if opts.script else "target", run_info=infos,
        timeline=compare.timeline([o.records for o in outs]),
    )
    scans = [r["scan"] for r in outs[0].records if r.get("type") == "cuda_ops"]
    result.cuda_ops = CudaOpsScan.from_dict(scans[0]) if scans else None
    if env.get("description"):
        result.detail["data"] = env["description"]
    crashed = [i for i in infos if i.status in ("crashed", "killed")]
    if crashed:
        first = crashed[0]
        result.error = f"run {first.index} {first.status} after {first.steps_completed} steps: {first.message}"

    partings = [compare.first_parting(outs[0].records, o.records) for o in outs[1:]]
    parting = compare.earliest(partings)
    escapes = attribute.escapes_from([e for o in outs for e in o.escapes])
    result.rng_escapes = escapes
    result.varying_seeds = seeds.varying([o.seeds for o in outs], {e.where for e in escapes})
    launcher.pin_sites = [c.where for c in result.varying_seeds]
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
        result.seconds = round(time.monotonic() - started, 3)
        return result

    result.verdict = "nondeterministic"
    observed = {}
    for o in outs:
        for key, value in (o.end.get("observed") or {}).items():
            if value and not observed.get(key):
                observed[key] = value
    module_sources = env.get("module_sources", {})
    if parting.data:
        result.detail["data_difference"] = parting.data
    if parting.streams:
        result.detail["rng_streams"] = parting.streams

    # 2. Replay in lockstep: the module, and the magnitudes.
    say("replaying to localize")
    folder = os.path.join(launcher.folder, "lockstep")
    replay = launcher.run_all(
        [launcher.spec("replay-ref", opts.steps, detail=True, lockstep={"folder": folder, "role": "ref"}),
         launcher.spec("replay-cmp", opts.steps, detail=True, lockstep={"folder": folder, "role": "cmp"})],
        jobs=2)
    again = compare.first_parting(replay[0].records, replay[1].records)
    reproduced = again is not None
    module, found_tensor, note = _localize(parting, again, replay)
    tensor = found_tensor or parting.tensor
    if note:
        result.detail["replay"] = note
    if again is not None and again.key() < parting.key() and module is None:
        result.detail["replay"] = f"the replay parted earlier, at step {again.step} ({again.stage})"
    if not reproduced:
        result.detail["replay"] = "the replay did not part again: the divergence is intermittent"
    result.first_divergence = Divergence(
        step=parting.step, stage=parting.stage, module=module, tensor=tensor,
        max_abs_diff=_magnitude(parting, replay[1].records, module))
    if parting.stage == "data" and parting.data == "order":
        result.detail["data"] = "the same samples arrived in another order"
    for r in replay[1].records:
        total = (r.get("diffs") or {}).get("param_total")
        if r.get("type") == "step" and total:
            result.growth.append(GrowthPoint(step=r["step"], max_abs_diff=total["max_abs"],
                                             rel_l2=total["rel_l2"]))
    module_where = None
    if module is not None:
        module_where = module_sources.get(module) or next(
            (module_sources[m] for m in sorted(module_sources, key=len, reverse=True)
             if module.startswith(m + ".") or m == ""), None)

    # 3. Attribution: knob pairs up to the divergent step.
    trials = []
    if opts.attribute:
        upto = 0 if parting.step is None else parting.step
        plan = attribute.plan(parting, device, escapes, observed,
                              {"PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED"),
                               "flags": result.environment.get("flags", {})},
                              varying=result.varying_seeds)
        say(f"proving the cause: {len(plan)} knob(s)")
        trials = _try_knobs(launcher, plan, upto, opts, say)
    result.knob_trials = trials
    result.causes = attribute.causes(parting, trials, escapes, observed, module, module_where,
                                     reproduced=reproduced, varying=result.varying_seeds)
    cite_scan(result.causes, result.cuda_ops, module)
    result.seconds = round(time.monotonic() - started, 3)
    return result


def _pair_removed(launcher: Launcher, knobs: list, upto: int, opts: DeterminismOptions) -> list:
    specs = []
    for knob_set in knobs:
        label = "+".join(knob_set) or "control"
        specs += [launcher.spec(f"knob-{label}-a", upto + 1, knobs=knob_set),
                  launcher.spec(f"knob-{label}-b", upto + 1, knobs=knob_set)]
    outs = launcher.run_all(specs, jobs=max(2, opts.jobs))
    return [_agree_through(outs[2 * i], outs[2 * i + 1], upto) for i in range(len(knobs))]


def _try_knobs(launcher: Launcher, plan: list, upto: int, opts: DeterminismOptions, say) -> list:
    """One knob at a time, most likely first, until one removes the divergence: a knob that
    removes it alone leaves no room for another independent cause. If none does, all knobs
    together, then all-but-one, find the ones needed together."""
    steps = upto + 1
    trials = []
    for knob in plan:
        say(f"rerunning with {knob}")
        (removed,) = _pair_removed(launcher, [[knob]], upto, opts)
        trials.append(attribute.trial(knob, removed, steps))
        if removed:
            return trials
    if len(plan) < 2:
        return trials
    say("no single knob removed it: trying them together")
    (together,) = _pair_removed(launcher, [plan], upto, opts)
    if not together:
        return trials
    needed = _pair_removed(launcher, [[k for k in plan if k != drop] for drop in plan], upto, opts)
    out = []
    for knob, removed_without in zip(plan, needed):
        necessary = not removed_without
        out.append(attribute.trial(knob, necessary, steps,
                                   "needed together with the other knobs" if necessary
                                   else "not needed once the others are set"))
    return out
