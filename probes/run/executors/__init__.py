"""Where fresh runs execute: one interface (:class:`Executor`) for the local pool and a Ray
cluster, so an audit submits child jobs without knowing where they run.

An audit describes each fresh process as a :class:`Job` (argv, environment, working folder,
stdin file, the spec files it reads, the trace whose step records are its progress) and submits
it under a key; :meth:`Executor.collect` gives back a :class:`Finished` per job as jobs end, in
the order they end, each naming the node it ran on; :meth:`Executor.cancel` ends every job
still out. A job's files (its trace, report, log) are where the audit expects them once it is
collected, wherever it ran.

* :class:`~audit.probes.run.executors.local.LocalExecutor`: today's processes on this machine.
* :class:`~audit.probes.run.executors.ray_cluster.RayExecutor`: each job a Ray task that runs
  the same child in a fresh interpreter in a temporary folder of its node and sends the files
  back (Ray is imported there only).

Another engine (Slurm through submitit, say) is one more subclass: submit, collect, cancel.
"""
from __future__ import annotations

from typing import Optional

from audit.probes.errors import UsageError
from audit.probes.run.executors.base import Executor, Finished, Job

__all__ = ["EXECUTORS", "Executor", "Finished", "Job", "make", "require"]

#: The executor names ``--executor`` and ``[tool.audit] executor`` take.
EXECUTORS = ("local", "ray")
#: What a missing Ray is told.
INSTALL_RAY = "pip install 'audit[ray]'"


def require(name: str) -> None:
    """Refuse, before any training, an executor whose library is not installed (one line)."""
    if name not in EXECUTORS:
        raise UsageError(f"--executor {name}: choose one of {', '.join(EXECUTORS)}")
    if name == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise UsageError(f"--executor ray needs Ray, which is not installed: {INSTALL_RAY}") from None


def make(name: str, address: Optional[str] = None, cwd: Optional[str] = None,
         spread: int = 0, device: str = "auto") -> Executor:
    """The executor ``name`` (``local`` or ``ray``); ``address``: the Ray cluster to join
    (None: Ray embedded on this machine); ``spread``: place that many jobs on different nodes."""
    require(name)
    if name == "local":
        from audit.probes.run.executors.local import LocalExecutor

        return LocalExecutor()
    from audit.probes.run.executors.ray_cluster import RayExecutor

    return RayExecutor(address, cwd, spread, device)
