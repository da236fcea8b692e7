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

from audit.probes.determinism import attribute, compare, latent, proof
from audit.probes.determinism.knobs import KNOBS
from audit.probes.results import DeterminismResult, Divergence, GrowthPoint, RunInfo
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
    cwd: Optional[str] = None
    stdin: Optional[bytes] = None  # script mode: every run's stdin; None: read the tool's own once


@dataclass
class Outcome:
    """One finished worker process."""

    name: str
    records: list
    exit_code: int
    seconds: float
    escapes: list = field(default_factory=list)
    output_tail: str = ""

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
        self.jitter = False  # vary DataLoader worker timing in the runs started from now on
        self.jitter_tried = False
        self.stdin_path: Optional[str] = None  # script mode: the bytes every run reads
        self.terminal = False  # script mode: the tool's stdin is a terminal
        if opts.script:
            self._keep_stdin()

    def _keep_stdin(self) -> None:
        from audit.probes import script_runner

        data = self.opts.stdin if self.opts.stdin is not None else script_runner.read_stdin()
        self.terminal = data is script_runner.TERMINAL
        if not self.terminal:
            self.stdin_path = os.path.join(self.folder, "stdin")
            with open(self.stdin_path, "wb") as fh:
                fh.write(data)

    def spec(self, name: str, steps: int, knobs=(), detail=False, lockstep=None) -> dict:
        self.count += 1
        base = os.path.join(self.folder, f"{self.count:03d}-{name}")
        spec = {
            "name": name, "trace": base + ".trace", "escape_log": base + ".escapes",
            "target": self.opts.target, "seed": self.opts.seed, "steps": steps,
            "device": self.opts.device, "input_shape": self.opts.input_shape,
            "num_classes": self.opts.num_classes, "knobs": list(knobs), "detail": detail,
            "lockstep": lockstep, "script": self.opts.script, "log": base + ".log",
            "stdin": "terminal" if self.terminal else "file", "jitter": self.jitter,
        }
        self.jitter_tried = self.jitter_tried or self.jitter
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
        stdin = open(self.stdin_path, "rb") if spec.get("script") and self.stdin_path else None
        try:
            proc = subprocess.Popen(argv, env=self._env(spec["knobs"]), cwd=self.opts.cwd,
                                    stdin=stdin or subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT)
        finally:
            if stdin is not None:
                stdin.close()
        return proc, log, time.monotonic()

    def finish(self, spec: dict, proc, log, started: float) -> Outcome:
        code = proc.wait()
        log.close()
        with open(spec["log"], "rb") as fh:
            tail = fh.read()[-4000:].decode("utf-8", "replace")
        return Outcome(spec["name"], read_trace(spec["trace"]), code,
                       time.monotonic() - started, read_log(spec["escape_log"]), tail)

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


def _step_diffs(records: list, step: Optional[int]) -> dict:
    kind = "init" if step is None else "step"
    return next((r.get("diffs") for r in records if r.get("type") == kind
                 and (step is None or r.get("step") == step)), None) or {}


def _magnitude(parting: compare.Parting, records: list, module: Optional[str]) -> Optional[float]:
    """The largest difference the replay measured where the runs part: the stage's own tensor,
    else the stage's largest, else (:func:`_any_magnitude`) the largest measured at that step."""
    if parting.outside:
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


def _any_magnitude(records: list, step: Optional[int]) -> Optional[float]:
    """The largest difference measured at a step in any tensor (for a stage whose own tensors
    the replay could not compare, e.g. the RNG state)."""
    diffs = _step_diffs(records, step)
    values = [v for k, v in diffs.items() if k != "param_total" and isinstance(v, (int, float))]
    values += [x for k, v in diffs.items() if isinstance(v, dict) and k != "param_total"
               for x in v.values()]
    return max(values) if values else None


def audit_determinism(opts: DeterminismOptions, progress: Optional[Callable[[str], None]] = None,
                      keep: Optional[str] = None) -> DeterminismResult:
    """Run the whole audit; raises :class:`TargetFailed` when the target cannot be loaded."""
    started = time.monotonic()
    folder = keep or tempfile.mkdtemp(prefix="audit-determinism-")
    say = progress or (lambda msg: None)
    try:
        return _audit(opts, Launcher(opts, folder), say, started)
    finally:
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)


def _audit(opts: DeterminismOptions, launcher: Launcher, say, started: float) -> DeterminismResult:
    say(f"{opts.runs} runs x {opts.steps} steps")
    outs = _plain_runs(opts, launcher, "run", say)
    for out in outs:
        if out.end.get("status") == "target_error":
            raise TargetFailed(out.end.get("message", "the target could not be loaded"))
    result = _new_result(opts, outs)
    parting = compare.earliest([compare.first_parting(outs[0].records, o.records) for o in outs[1:]])
    observed = _observed(outs)
    if parting is None and latent.can_act(observed):
        say("the runs agree: rerunning with varied DataLoader worker timing")
        launcher.jitter = True
        more = _plain_runs(opts, launcher, "jitter", say)
        parting = compare.earliest([compare.first_parting(outs[0].records, o.records) for o in more])
        if parting is None:
            launcher.jitter = False
        else:
            result.detail["jitter"] = latent.JITTER_NOTE
            outs = [outs[0], *more]
            result.run_info = [_run_info(i, o, opts.steps) for i, o in enumerate(outs)]
            result.runs = len(outs)
            result.timeline = compare.timeline([o.records for o in outs])
    escapes = attribute.escapes_from([e for o in outs for e in o.escapes])
    result.rng_escapes = escapes
    if parting is None:
        late = compare.rng_only([o.records for o in outs])
        if late:
            result.detail["latent_rng"] = (
                f"the RNG state differs between runs from step {late[0]}, but nothing the "
                "training computes depends on it within these steps")
        result.latent_sources = latent.sources(observed, escapes, result.device,
                                               jittered=launcher.jitter_tried)
    else:
        _diverged(opts, launcher, result, outs, parting, observed, say)
    result.seconds = round(time.monotonic() - started, 3)
    return result


def _plain_runs(opts: DeterminismOptions, launcher: Launcher, name: str, say) -> list:
    specs = [launcher.spec(f"{name}{i}", opts.steps) for i in range(opts.runs)]
    return launcher.run_all(specs, opts.jobs, on_done=lambda: say("run finished"))


def _new_result(opts: DeterminismOptions, outs: list) -> DeterminismResult:
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
    if env.get("description"):
        result.detail["data"] = env["description"]
    if env.get("counting"):
        result.detail["steps_counted"] = {"optimizer": "optimizer steps",
                                          "backward": "backward passes"}[env["counting"]]
    crashed = [i for i in infos if i.status in ("crashed", "killed")]
    if crashed:
        first = crashed[0]
        result.error = f"run {first.index} {first.status} after {first.steps_completed} steps: {first.message}"
    return result


def _observed(outs: list) -> dict:
    observed: dict = {}
    for o in outs:
        for key, value in (o.end.get("observed") or {}).items():
            if value and not observed.get(key):
                observed[key] = value
    return observed


def _diverged(opts: DeterminismOptions, launcher: Launcher, result: DeterminismResult, outs: list,
              parting: compare.Parting, observed: dict, say) -> None:
    """The runs parted: localize in a replay, measure, then prove the cause."""
    result.verdict = "nondeterministic"
    env = next((o.env for o in outs if o.env), {})
    if parting.data:
        result.detail["data_difference"] = parting.data
    if parting.streams:
        result.detail["rng_streams"] = parting.streams
    say("replaying to localize")
    replay = _replay(opts, launcher)
    module, tensor, again = _localize(result, parting, replay)
    controls = [o.records for o in outs] + [r.records for r in replay]
    reproduced = again is not None
    if not reproduced:
        say("the replay agreed: repeating the plain runs")
        plain = _plain_runs(opts, launcher, "again", say)
        controls += [o.records for o in plain]
        reproduced = compare.earliest([compare.first_parting(plain[0].records, o.records)
                                       for o in plain[1:]]) is not None
        result.detail["replay"] = INTERMITTENT[reproduced]
    if parting.outside:
        module = (tensor or "").rpartition(".")[0] or None
        result.detail["outside_optimizer"] = (
            f"parameters changed outside the optimizer: {tensor} agrees after the update of "
            f"step {parting.step} and differs at the start of step {parting.step + 1}")
    result.first_divergence = Divergence(step=parting.step, stage=parting.stage, module=module,
                                         tensor=tensor, max_abs_diff=_measured(result, parting, replay, module))
    if parting.stage == "data" and parting.data == "order":
        result.detail["data"] = "the same samples arrived in another order"
    for r in replay[1].records:
        total = (r.get("diffs") or {}).get("param_total")
        if r.get("type") == "step" and total:
            result.growth.append(GrowthPoint(step=r["step"], max_abs_diff=total["max_abs"],
                                             rel_l2=total["rel_l2"]))
    module_where = _module_where(env.get("module_sources", {}), module)
    trials = []
    if opts.attribute:
        upto = 0 if parting.step is None else parting.step
        plan = attribute.plan(parting, result.device, result.rng_escapes, observed,
                              {"PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED"),
                               "flags": result.environment.get("flags", {})})
        say(f"proving the cause: {len(plan)} knob(s)")
        chance = proof.chance_of(controls, upto, parting.stage)
        trials = _try_knobs(launcher, plan, upto, opts, say, chance, result.device)
    result.knob_trials = trials
    result.causes = attribute.causes(parting, trials, result.rng_escapes, observed, module,
                                     module_where, reproduced=reproduced)


#: What the audit says when the replay did not part again: keyed by whether the plain runs,
#: repeated as first made, parted again.
INTERMITTENT = {
    True: ("the replay (two runs side by side, with module hooks) did not part again, but the "
           "plain runs did when repeated: the difference depends on how the runs are started "
           "(e.g. a seed from the clock, alike for runs started together)"),
    False: "neither the replay nor the plain runs, repeated, parted again: the divergence is intermittent",
}


def _replay(opts: DeterminismOptions, launcher: Launcher) -> list:
    folder = os.path.join(launcher.folder, "lockstep")
    return launcher.run_all(
        [launcher.spec("replay-ref", opts.steps, detail=True, lockstep={"folder": folder, "role": "ref"}),
         launcher.spec("replay-cmp", opts.steps, detail=True, lockstep={"folder": folder, "role": "cmp"})],
        jobs=2)


def _localize(result: DeterminismResult, parting: compare.Parting, replay: list) -> tuple:
    """(module, tensor, the replay's own parting) from the replay's module events."""
    again = compare.first_parting(replay[0].records, replay[1].records)
    module, tensor = None, parting.tensor
    if again is not None and parting.stage in ("forward", "backward"):
        same = again.step == parting.step and again.stage == parting.stage
        found, found_tensor = compare.localize(replay[0].records, replay[1].records, again.step, again.stage)
        if same or parting.stage == again.stage:
            module = found
            tensor = found_tensor or tensor
            if not same:
                result.detail["replay"] = (f"the replay parted at step {again.step} ({again.stage}); "
                                           "the module is named from there")
    elif again is not None and again.key() < parting.key():
        result.detail["replay"] = f"the replay parted earlier, at step {again.step} ({again.stage})"
    return module, tensor, again


def _measured(result: DeterminismResult, parting: compare.Parting, replay: list,
              module: Optional[str]) -> Optional[float]:
    magnitude = _magnitude(parting, replay[1].records, module)
    if magnitude is None and parting.stage != "init":
        magnitude = _any_magnitude(replay[1].records, parting.step)
        if magnitude is not None:
            result.detail["max_abs_diff"] = ("the largest difference the replay measured at this "
                                             "step (the stage's own tensors were not compared)")
    return magnitude


def _module_where(module_sources: dict, module: Optional[str]) -> Optional[str]:
    if module is None:
        return None
    return module_sources.get(module) or next(
        (module_sources[m] for m in sorted(module_sources, key=len, reverse=True)
         if module.startswith(m + ".") or m == ""), None)


def _pair_removed(launcher: Launcher, knobs: list, upto: int, opts: DeterminismOptions) -> list:
    specs = []
    for knob_set in knobs:
        label = "+".join(knob_set) or "control"
        specs += [launcher.spec(f"knob-{label}-a", upto + 1, knobs=knob_set),
                  launcher.spec(f"knob-{label}-b", upto + 1, knobs=knob_set)]
    outs = launcher.run_all(specs, jobs=max(2, opts.jobs))
    return [_agree_through(outs[2 * i], outs[2 * i + 1], upto) for i in range(len(knobs))]


def _try_knobs(launcher: Launcher, plan: list, upto: int, opts: DeterminismOptions, say,
               chance: proof.Chance, device: str) -> list:
    """:func:`probes.determinism.proof.search` with pairs of fresh processes."""
    def run_pairs(knobs: list, count: int) -> list:
        say(f"rerunning with {'+'.join(knobs)}" + (f" ({count} pairs)" if count > 1 else ""))
        return _pair_removed(launcher, [knobs] * count, upto, opts)

    return proof.search(plan, chance, device, run_pairs, upto + 1)
