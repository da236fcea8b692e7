"""The interface every executor offers, and what goes in and comes out of it."""
from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from typing import Any, Optional

#: Seconds between two looks at running jobs.
TICK = 0.05


@dataclass
class Job:
    """One fresh child process, described so that any executor can start it.

    Paths under ``folder`` (the audit's work folder: specs, traces, logs) are the node's own
    temporary folder when the job runs on another node; ``inputs`` are the files there the
    child reads (its spec, its stdin), sent along; whatever the child writes there comes back.
    """

    argv: list[str]
    env: dict[str, str]
    log: str  # the child's stdout and stderr
    folder: str
    inputs: list[str] = field(default_factory=list)
    cwd: Optional[str] = None
    stdin: Optional[str] = None  # a file the child reads as stdin (None: no input)
    trace: Optional[str] = None  # a file growing by one record per step: progress, and the limit
    timeout: Optional[float] = None  # seconds without a record before the child is ended
    place: Optional[int] = None  # jobs with different places run on different nodes (spread)


@dataclass
class Finished:
    """One job that ended. ``exit_code`` None: the executor ended it (``stopped`` says why) or
    could not run it (``lost`` says why, naming the node)."""

    key: int
    exit_code: Optional[int]
    seconds: float
    node: str
    steps: int = 0
    stopped: str = ""  # Status.TIMED_OUT: no record for ``timeout`` seconds
    stack: str = ""  # its threads' stacks, when it timed out
    lost: str = ""  # it never finished: its node was lost (after the executor's retries)
    handle: Any = None  # the local process (or group) that ran it, for whoever started it


class Executor(abc.ABC):
    """Runs submitted :class:`Job` s; whatever ends the audit, :meth:`cancel` leaves none running."""

    name = ""

    @abc.abstractmethod
    def submit(self, key: int, job: Job) -> None:
        """Start (or queue) ``job``; its :class:`Finished` will carry ``key``."""

    @abc.abstractmethod
    def collect(self, wait: float = 0.05) -> list[Finished]:
        """The jobs that ended since the last call (waiting up to ``wait`` seconds for one)."""

    def steps(self) -> dict[int, int]:
        """Steps each running job has made so far, where the executor can see them."""
        return {}

    @abc.abstractmethod
    def cancel(self) -> None:
        """End every job still running or queued."""

    def close(self) -> None:
        """Release what the executor holds (a cluster connection); cancels first."""
        self.cancel()

    def run(self, job: Job) -> Finished:
        """One job, waited for (for audits that run one at a time); ended if we are stopped."""
        self.submit(0, job)
        try:
            while True:
                done = self.collect()
                if done:
                    return done[0]
                time.sleep(TICK)
        finally:
            self.cancel()
