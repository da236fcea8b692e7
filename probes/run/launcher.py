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
from audit.probes.run import executors
from audit.probes.run.executors import Executor, Finished, Job
from audit.probes.run.executors.local import LocalExecutor
from audit.probes.run.processes import DEFAULT_TIMEOUT, Run, child_argv
from audit.probes.run.escape_log import read_log
from audit.probes.run.spec import LockstepSpec, ResumeSpec, RunSpec, write_spec
from audit.probes.run.trace import read_trace
from audit.probes.run.target import carry


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
    executor: str = "local"  # where runs execute (audit.probes.run.executors): local or ray
    ray_address: Optional[str] = None  # the Ray cluster to join (None: Ray on this machine)
    across_nodes: bool = False  # the compared runs (and each knob pair) on different nodes


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
    node: str = ""  # the machine it ran on (its executor's name for it)

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
    included), no process it started is left running.

    Runs go to the executor ``opts.executor`` names (:mod:`audit.probes.run.executors`), except
    those that share a folder with another run while they run (lockstep partners, resume's
    checkpoint) and runs made of several processes (ranks): those run on this machine."""

    #: Whether this launcher's runs may run elsewhere (rank launchers start groups here).
    remote_runs = True

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
        self._batch: list[RunSpec] = []  # the specs run_all is running
        self.local = LocalExecutor(start=lambda key, job: self.start(self._batch[key]))
        self.remote: Optional[Executor] = None  # made when a run first needs it
        #: The target as the runs get it, and the files a node needs for it (a shipped object).
        self.target, self.carried = (carry(opts.target, folder) if opts.executor != "local"
                                     else (opts.target, []))
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
            target=self.target, seed=self.opts.seed, steps=steps,
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
        """``spec`` as a process of this machine."""
        job = self.job(spec, 0)
        return Run(job.argv, job.log, job.trace, job.env, cwd=job.cwd, stdin_path=job.stdin)

    def finish(self, spec: RunSpec, run: Run, stopped: str = "", stack: str = "") -> Outcome:
        code = run.end() if stopped else run.end_when_done()
        assert spec.escape_log is not None and spec.seed_log is not None  # set by Launcher.spec
        return Outcome(spec.name, read_trace(spec.trace), None if stopped else code,
                       time.monotonic() - run.started, read_log(spec.escape_log),
                       run.output_tail(), stopped, stack, seed_log.read(spec.seed_log))

    def executor(self, spec: RunSpec) -> Executor:
        """Where ``spec`` runs (see the class's text)."""
        if (self.opts.executor == "local" or not self.remote_runs or spec.lockstep
                or spec.resume or spec.dist or spec.rank_specs):
            return self.local
        if self.remote is None:
            self.remote = executors.make(self.opts.executor, self.opts.ray_address, self.opts.cwd,
                                         spread=self.opts.runs if self.opts.across_nodes else 0,
                                         device=self.opts.device)
        return self.remote

    def job(self, spec: RunSpec, place: int) -> Job:
        """``spec`` as an executor's job (what :meth:`start` starts, described)."""
        if spec.script:
            from audit.probes.run import program as script_runner

            argv = script_runner.command(spec)
        else:
            argv = child_argv("audit.probes.child.worker", spec.spec_path)
        stdin = self.stdin_path if spec.script else None
        assert spec.log is not None  # Launcher.spec sets every run's log
        return Job(argv, self._env(spec.knobs), spec.log, self.folder, [spec.spec_path, *self.carried],
                   cwd=self.opts.cwd, stdin=stdin, trace=spec.trace, timeout=self.opts.timeout,
                   place=place)

    def arrived(self, spec: RunSpec, done: Finished) -> Outcome:
        """A run that ran elsewhere, its files now here: its :class:`Outcome`."""
        # Launcher.spec sets every run's log, escape log and seed log
        assert spec.log is not None and spec.escape_log is not None and spec.seed_log is not None
        tail = done.lost
        if not tail and os.path.exists(spec.log):
            with open(spec.log, "rb") as fh:
                tail = fh.read()[-4000:].decode("utf-8", "replace")
        code = -9 if done.lost else done.exit_code  # lost with its node: killed
        return Outcome(spec.name, read_trace(spec.trace), code, done.seconds,
                       read_log(spec.escape_log), tail, done.stopped, done.stack,
                       seed_log.read(spec.seed_log), done.node)

    def collected(self, spec: RunSpec, done: Finished) -> Outcome:
        if done.handle is None:
            return self.arrived(spec, done)
        out = self.finish(spec, done.handle, done.stopped, done.stack)
        out.node = done.node
        return out

    def close(self) -> None:
        """Release the executor (a cluster's placement of runs)."""
        if self.remote is not None:
            self.remote.close()
            self.remote = None

    def run_all(self, specs: list[RunSpec], jobs: int, phase: str = "") -> list[Outcome]:
        """Run specs with at most ``jobs`` at a time; lockstep partners always together. A run
        that makes no step for ``opts.timeout`` seconds is ended (its stacks kept)."""
        self.phase = phase or self.phase
        self._batch = specs
        results: dict[int, Outcome] = {}
        pending = list(range(len(specs)))
        running: dict[int, Executor] = {}  # index -> its executor
        total = sum(s.steps for s in specs)
        try:
            while pending or running:
                while pending and (len(running) < max(jobs, 1) or specs[pending[0]].lockstep):
                    i = pending.pop(0)
                    running[i] = self.executor(specs[i])
                    running[i].submit(i, self.job(specs[i], i))
                for executor in dict.fromkeys(running.values()):
                    for done in executor.collect():
                        del running[done.key]
                        results[done.key] = self.collected(specs[done.key], done)
                        if done.stopped == Status.TIMED_OUT:
                            self.stalled.append(results[done.key])
                steps = sum(min(o.steps_done, specs[i].steps) for i, o in results.items())
                steps += sum(min(n, specs[i].steps) for i, n in self.local.steps().items())
                self.progress(Progress(self.phase, steps, total))
                time.sleep(0.05)
        finally:  # an interrupt, or an error of ours: end them all
            for executor in dict.fromkeys([self.local, *running.values()]):
                executor.cancel()
        return [results[i] for i in range(len(specs))]
