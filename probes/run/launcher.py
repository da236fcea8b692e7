"""Starting fresh runs of the user's training and collecting what they wrote.

:class:`Launcher` writes each run's spec (:mod:`audit.probes.run.spec`), starts the child
(``audit.probes.child.worker`` for a target, ``audit.probes.child.bootstrap`` for a script),
watches the runs (progress, the no-progress limit) and reads back each one's trace, escape log
and seed log as an :class:`Outcome`. Every engine that trains (determinism, resume, diff)
starts its runs here, with the same :class:`RunOptions`.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from audit.probes.progress import Progress, Reporter, silent
from audit.probes.results.records import Record, Status
from audit.probes.run import seed_log
from audit.probes.run.knobs import KNOBS
from audit.probes.run.processes import DEFAULT_TIMEOUT, Run, child_argv, end_runs
from audit.probes.run.rng_escape import read_log
from audit.probes.run.spec import LockstepSpec, ResumeSpec, RunSpec, write_spec
from audit.probes.run.trace import read_trace


def run_env(knobs: Sequence[str]) -> dict[str, str]:
    """A run's environment: ours, the knobs' part, Agg. Nothing of the tool goes on the
    user's ``PYTHONPATH``: the child imports it from where it is installed."""
    env = dict(os.environ)
    for knob in knobs:
        env.update(KNOBS[knob].env)
    env.setdefault("MPLBACKEND", "Agg")
    return env


class TargetFailed(Exception):
    """A run could not load or call the target (exit status 2), with the worker's message."""


@dataclass
class RunOptions:
    target: Optional[str] = None
    runs: int = 2
    steps: int = 20
    seed: int = 0
    device: str = "auto"
    input_shape: Optional[list[Any]] = None
    num_classes: Optional[int] = None
    jobs: int = 1
    attribute: bool = True
    script: Optional[list[str]] = None  # script mode: ["python", "train.py", ...]
    cuda_ops: bool = True  # scan the first run's ops for CUDA nondeterminism
    cwd: Optional[str] = None
    timeout: Optional[float] = DEFAULT_TIMEOUT  # seconds a run may go without a step
    stdin: Optional[bytes] = None  # script mode: every run's stdin; None: read the tool's own once


@dataclass
class Outcome:
    """One finished worker process."""

    name: str
    records: list[dict[str, Any]]
    exit_code: Optional[int]  # None: ended by the audit (a timeout or an interrupt)
    seconds: float
    escapes: list[Any] = field(default_factory=list)
    output_tail: str = ""
    stopped: str = ""  # Status.TIMED_OUT or Status.INTERRUPTED: the audit ended it
    stack: str = ""  # the stuck process's stacks (faulthandler), when it timed out
    seeds: list[Any] = field(default_factory=list)  # the seeding calls it logged

    @property
    def end(self) -> dict[str, Any]:
        return next((r for r in reversed(self.records) if r.get("type") == Record.END), {})

    @property
    def env(self) -> dict[str, Any]:
        return next((r for r in self.records if r.get("type") == Record.ENV), {})

    @property
    def steps_done(self) -> int:
        return sum(1 for r in self.records if r.get("type") == Record.STEP)


class Launcher:
    """Starts worker processes with specs and environments, watches them (progress, the
    no-progress limit) and collects their traces. Whatever ends the watching (an interrupt
    included), no process it started is left running."""

    def __init__(self, opts: RunOptions, folder: str, progress: Reporter = None):
        self.opts, self.folder = opts, folder
        self.progress = progress or silent
        self.phase = "starting"
        self.count = 0
        self.stalled: list[Any] = []  # outcomes of runs ended for making no progress
        self.pin_sites: list[str] = []  # the seeding calls the pin_seeds knob pins
        self.jitter = False  # vary DataLoader worker timing in the runs started from now on
        self.jitter_tried = False
        self.stdin_path: Optional[str] = None  # script mode: the bytes every run reads
        self.terminal = False  # script mode: the tool's stdin is a terminal
        if opts.script:
            self._keep_stdin()

    def _keep_stdin(self) -> None:
        from audit.probes.run import program as script_runner

        data = self.opts.stdin if self.opts.stdin is not None else script_runner.read_stdin()
        self.terminal = data is script_runner.TERMINAL
        if data is not None:  # TERMINAL is None
            self.stdin_path = os.path.join(self.folder, "stdin")
            with open(self.stdin_path, "wb") as fh:
                fh.write(data)

    def spec(self, name: str, steps: int, knobs: Sequence[str] = (), detail: bool = False,
             lockstep: Optional[LockstepSpec] = None, resume: Optional[ResumeSpec] = None,
             cuda_ops: bool = False) -> RunSpec:
        """A worker spec, written to the folder."""
        self.count += 1
        base = os.path.join(self.folder, f"{self.count:03d}-{name}")
        spec = RunSpec(
            name=name, trace=base + ".trace", escape_log=base + ".escapes",
            target=self.opts.target, seed=self.opts.seed, steps=steps,
            device=self.opts.device, input_shape=self.opts.input_shape,
            num_classes=self.opts.num_classes, knobs=list(knobs), detail=detail,
            lockstep=lockstep, script=self.opts.script, log=base + ".log",
            seed_log=base + ".seeds", pin_sites=self.pin_sites,
            stdin="terminal" if self.terminal else "file", jitter=self.jitter,
            resume=resume, cuda_ops=cuda_ops,
        )
        self.jitter_tried = self.jitter_tried or self.jitter
        write_spec(spec, base + ".json")
        return spec

    def _env(self, knobs: Sequence[str]) -> dict[str, str]:
        return run_env(knobs)

    def start(self, spec: RunSpec) -> Run:
        if spec.script:
            from audit.probes.run import program as script_runner

            argv = script_runner.command(spec)
        else:
            argv = child_argv("audit.probes.child.worker", spec.spec_path)
        stdin = self.stdin_path if spec.script else None
        assert spec.log is not None  # Launcher.spec sets every run's log
        return Run(argv, spec.log, spec.trace, self._env(spec.knobs), cwd=self.opts.cwd,
                   stdin_path=stdin)

    def finish(self, spec: RunSpec, run: Run, stopped: str = "", stack: str = "") -> Outcome:
        code = run.end() if stopped else run.end_when_done()
        assert spec.escape_log is not None and spec.seed_log is not None  # set by Launcher.spec
        return Outcome(spec.name, read_trace(spec.trace), None if stopped else code,
                       time.monotonic() - run.started, read_log(spec.escape_log),
                       run.output_tail(), stopped, stack, seed_log.read(spec.seed_log))

    def run_all(self, specs: list[Any], jobs: int, phase: str = "") -> list[Any]:
        """Run specs with at most ``jobs`` at a time; lockstep partners always together. A run
        that makes no step for ``opts.timeout`` seconds is ended (its stacks kept)."""
        self.phase = phase or self.phase
        results: dict[int, Outcome] = {}
        pending = list(range(len(specs)))
        running: list[tuple[int, Run]] = []
        total = sum(s.steps for s in specs)
        try:
            while pending or running:
                while pending and (len(running) < max(jobs, 1) or specs[pending[0]].lockstep):
                    i = pending.pop(0)
                    running.append((i, self.start(specs[i])))
                for item in list(running):
                    i, run = item
                    run.read_steps()
                    if run.poll() is not None:
                        running.remove(item)
                        results[i] = self.finish(specs[i], run)
                    elif run.stalled(self.opts.timeout):
                        running.remove(item)
                        results[i] = self.finish(specs[i], run, Status.TIMED_OUT, run.stack())
                        self.stalled.append(results[i])
                done = sum(min(o.steps_done, specs[i].steps) for i, o in results.items())
                done += sum(min(run.steps, specs[i].steps) for i, run in running)
                self.progress(Progress(self.phase, done, total))
                time.sleep(0.05)
        finally:  # an interrupt, or an error of ours: end them all
            end_runs([run for _, run in running])
        return [results[i] for i in range(len(specs))]
