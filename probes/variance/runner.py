"""Fresh-process runs for ``audit variance`` and ``audit compare``, up to ``jobs`` at a time.

A small pool of its own rather than :class:`audit.probes.run.launcher.Launcher`: these runs write one JSON report
each (no traces, no knobs, no lockstep partners), and their cost must stay that of plain
training runs. With ``jobs > 1`` each process gets ``cpu_count // jobs`` intra-op threads (unless
``OMP_NUM_THREADS`` is set), so parallel runs do not fight over cores. Every process still
running when the pool stops (an error, Ctrl-C) is terminated, then killed; on a cluster
(``executor``) the outstanding tasks are cancelled. The runs go to an executor
(:mod:`audit.probes.run.executors`): this machine's processes, or Ray tasks.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from audit.probes.run.executors import Executor, Finished, Job
from audit.probes.run.executors.local import LocalExecutor
from audit.probes.run.processes import child_argv
from audit.probes.run.spec import VarianceRunSpec, write_spec
from audit.probes.run.target import carry
from audit.probes.results.records import Status


@dataclass
class RunSpec:
    """One run: its group (source, ``all``, ``a`` or ``b``), varied seed and every seed."""

    group: str
    seed: int
    seeds: dict[str, Any]  # init/data/augment/dropout -> seed
    target: Optional[str] = None


@dataclass
class RunOutcome:
    spec: RunSpec
    exit_code: int
    report: dict[str, Any] = field(default_factory=dict)
    output_tail: str = ""
    node: str = ""  # where it ran
    lost: str = ""  # it never finished: why (its node was lost), naming the node

    @property
    def status(self) -> str:
        if self.report.get("status"):
            return self.report["status"]
        return Status.KILLED if self.exit_code < 0 else Status.CRASHED


@dataclass
class PoolOptions:
    steps: int
    base_seed: int = 0
    device: str = "auto"
    input_shape: Optional[list[Any]] = None
    num_classes: Optional[int] = None
    jobs: int = 1
    cwd: Optional[str] = None
    executor: str = "local"  # where the runs execute: local or ray
    ray_address: Optional[str] = None  # the Ray cluster to join (None: Ray on this machine)


def worker_spec(run: RunSpec, opts: PoolOptions, environment: bool = False) -> VarianceRunSpec:
    """What :mod:`audit.probes.child.variance` reads (``out`` set by the caller)."""
    return VarianceRunSpec(target=run.target, seeds=run.seeds, base_seed=opts.base_seed,
                           steps=opts.steps, device=opts.device, input_shape=opts.input_shape,
                           num_classes=opts.num_classes, environment=environment)


def child_environment(jobs: int) -> dict[str, Any]:
    env = dict(os.environ)
    env.setdefault("MPLBACKEND", "Agg")
    if jobs > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    return env


class Pool:
    """Writes each run's spec into ``folder`` and runs them, ``jobs`` at a time, on ``executor``
    (the local one unless told otherwise)."""

    def __init__(self, opts: PoolOptions, folder: str, executor: Optional[Executor] = None):
        self.opts, self.folder = opts, folder
        self.env = child_environment(opts.jobs)
        self.executor = executor or LocalExecutor()

    def _job(self, index: int, run: RunSpec) -> tuple[Job, str]:
        base = os.path.join(self.folder, f"{index:04d}-{run.group}-{run.seed}")
        spec = worker_spec(run, self.opts, index == 0)
        spec.out = base + ".out.json"
        carried: list[str] = []
        if self.opts.executor != "local":  # a shipped object goes to the node with the spec
            spec.target, carried = carry(spec.target, self.folder)
        write_spec(spec, base + ".json")
        job = Job(child_argv("audit.probes.child.variance", base + ".json"), self.env,
                  base + ".log", self.folder, [base + ".json", *carried], cwd=self.opts.cwd)
        return job, base

    @staticmethod
    def _finish(run: RunSpec, done: Finished, base: str) -> RunOutcome:
        try:
            with open(base + ".log", "rb") as fh:
                tail = fh.read()[-2000:].decode("utf-8", "replace")
        except OSError:
            tail = ""
        try:
            with open(base + ".out.json", encoding="utf-8") as fh:
                report = json.load(fh)
        except (OSError, ValueError):
            report = {}
        code = -9 if done.exit_code is None else done.exit_code
        return RunOutcome(run, code, report, tail, done.node, done.lost)

    def run(self, runs: list[Any], on_done: Optional[Callable[[RunOutcome], None]] = None,
            stop: Optional[Callable[[RunOutcome], bool]] = None) -> list[Any]:
        """Outcomes in the order of ``runs``; ``stop(outcome)`` true ends the pool early."""
        results: dict[int, Any] = {}
        pending = list(range(len(runs)))
        running: dict[int, str] = {}  # index -> its files' base path
        try:
            while pending or running:
                while pending and len(running) < max(1, self.opts.jobs):
                    i = pending.pop(0)
                    job, running[i] = self._job(i, runs[i])
                    self.executor.submit(i, job)
                for done in self.executor.collect():
                    i = done.key
                    results[i] = self._finish(runs[i], done, running.pop(i))
                    if on_done:
                        on_done(results[i])
                    if stop and stop(results[i]):
                        pending.clear()
                        self.executor.cancel()
                        running.clear()
                time.sleep(0.01)
        finally:
            self.executor.cancel()
        return [results[i] for i in sorted(results)]
