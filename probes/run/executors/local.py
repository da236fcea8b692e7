"""The local executor: every job a fresh process on this machine (today's pool)."""
from __future__ import annotations

import socket
import time
from typing import Any, Callable, Optional

from audit.probes.results.records import Status
from audit.probes.run.executors.base import Executor, Finished, Job
from audit.probes.run.processes import Run, end_runs

#: How a job ended: (exit code, None when we ended it; why we did; its stacks then).
Ended = tuple[Optional[int], str, str]
#: What starts a job here: ``(key, job) -> run`` (a :class:`Run` or anything answering as one).
Starter = Callable[[int, Job], Any]


def start_run(key: int, job: Job) -> Run:
    """A job as one process in its own process group."""
    return Run(job.argv, job.log, job.trace, job.env, cwd=job.cwd, stdin_path=job.stdin)


def check(run: Any, timeout: Optional[float]) -> Optional[Ended]:
    """``(exit_code, stopped, stack)`` once ``run`` has ended (ended by us, with its stacks,
    when it made no progress for ``timeout`` seconds), else None."""
    run.read_steps()
    if run.poll() is not None:
        return run.end_when_done(), "", ""
    if run.stalled(timeout):
        stack = run.stack()
        run.end()
        return None, Status.TIMED_OUT, stack
    return None


class LocalExecutor(Executor):
    """Jobs as processes of this machine, each in its own process group; ``start`` makes the
    process (the determinism launchers start rank groups their own way)."""

    name = "local"

    def __init__(self, start: Optional[Starter] = None):
        self.start = start or start_run
        self.node = socket.gethostname()
        self.running: dict[int, tuple[Job, Any]] = {}

    def submit(self, key: int, job: Job) -> None:
        self.running[key] = (job, self.start(key, job))

    def collect(self, wait: float = 0.0) -> list[Finished]:
        done = []
        for key, (job, run) in list(self.running.items()):
            ended = check(run, job.timeout)
            if ended is None:
                continue
            del self.running[key]
            code, stopped, stack = ended
            done.append(Finished(key, code, time.monotonic() - run.started, self.node, run.steps,
                                 stopped, stack, handle=run))
        return done

    def steps(self) -> dict[int, int]:
        return {key: run.steps for key, (_, run) in self.running.items()}

    def cancel(self) -> None:
        runs = [run for _, run in self.running.values()]
        self.running.clear()
        end_runs(runs)
