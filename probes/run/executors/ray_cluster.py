"""The Ray executor: every job a Ray task that runs the child on whatever node Ray places it.

The task (:func:`audit.probes.run.executors.node.run_here`) starts the same child argv in a
fresh interpreter in a temporary folder of its node and returns what the child wrote; this side
writes those files where the local executor's child would have. With an address (``auto``,
``ray://HOST:PORT``, a GCS address) the audit joins that cluster and the user's code reaches the
nodes through Ray's runtime environment (the working folder as ``working_dir``); without one,
Ray starts embedded on this machine. A task lost with its node is retried by Ray
(:data:`RETRIES`); one that still fails is that job's failure, naming the node. ``spread``
jobs go to different nodes (a placement group, strict spread while there are nodes enough).
Ray is imported here only.
"""
from __future__ import annotations

import logging
import os
import re
import signal
import socket
import time
from typing import Any, Optional

from audit.probes.errors import UsageError
from audit.probes.run.executors import node
from audit.probes.run.executors.base import Executor, Finished, Job

#: Times Ray reruns a task whose node or worker died.
RETRIES = 3
#: Seconds to wait for the nodes a spread placement needs.
PLACEMENT_WAIT = 60.0
#: What the working folder sent to the nodes leaves out.
EXCLUDES = [".git", ".venv", "venv", "__pycache__", "node_modules", "audit-report", "*.pt", "*.ckpt"]
_NODE_IN_ERROR = re.compile(r"node ID: ([0-9a-f]+)")


def _on_node(payload: dict[str, Any]) -> dict[str, Any]:
    """The Ray task: the job run on this node, and the node's name."""
    import ray

    out = node.run_here(payload)
    out["node"] = node_name(ray.get_runtime_context().get_node_id())
    return out


def node_name(node_id: str) -> str:
    """A node as reports name it: its host and the start of its Ray node id."""
    return f"{socket.gethostname()}/{node_id[:8]}"


#: The connection this process made: (address, working folder sent), None before any.
_joined: list[Optional[tuple[Optional[str], Optional[str]]]] = [None]


def _connect(ray: Any, address: Optional[str], cwd: str) -> None:
    """Join the cluster at ``address`` (None: start Ray here) once per process, sending the
    working folder as the job's ``working_dir`` when there is an address (Ray takes local
    folders at the job level only), and keeping the audit's signal handlers (Ctrl-C must reach
    the audit, not Ray). A connection someone else made is used as it is."""
    key = (address, cwd if address is not None else None)
    if ray.is_initialized() and _joined[0] in (None, key):
        return
    if ray.is_initialized():
        ray.shutdown()  # ours, to another cluster or with another working folder
    runtime_env = {"working_dir": cwd, "excludes": EXCLUDES} if address is not None else None
    kept = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        ray.init(address=address, runtime_env=runtime_env, include_dashboard=False,
                 log_to_driver=False, logging_level=logging.ERROR)
    except Exception as exc:  # noqa: BLE001 (Ray raises bare Exception when a node cannot start)
        what = f"reach the Ray cluster at {address}" if address else "start Ray on this machine"
        raise UsageError(f"--executor ray: cannot {what}: {' '.join(str(exc).split())[:300]}; "
                         "check --ray-address (e.g. auto, or ray://HOST:10001)") from None
    finally:
        for sig, handler in kept.items():
            signal.signal(sig, handler)
    _joined[0] = key


class RayExecutor(Executor):
    """Jobs as Ray tasks (see the module's text)."""

    name = "ray"

    def __init__(self, address: Optional[str] = None, cwd: Optional[str] = None,
                 spread: int = 0, device: str = "auto"):
        import ray

        self.ray, self.address = ray, address
        self.cwd = os.path.abspath(cwd or os.getcwd())
        _connect(ray, address, self.cwd)
        gpus = 1 if device.startswith("cuda") or (
            device == "auto" and ray.cluster_resources().get("GPU", 0) > 0) else 0
        self.task = ray.remote(_on_node)
        self.options: dict[str, Any] = {"num_cpus": 1, "num_gpus": gpus, "max_retries": RETRIES}
        self.group: Any = None
        self.bundles = 0
        if spread > 1:
            self.group, self.bundles = self._spread(spread, gpus)
        self.out: dict[Any, tuple[int, Job, float]] = {}  # ObjectRef -> (key, job, when sent)

    def _spread(self, count: int, gpus: int) -> tuple[Any, int]:
        from ray.util.placement_group import placement_group

        alive = [n for n in self.ray.nodes() if n.get("Alive")]
        if len(alive) < 2:
            raise UsageError("--across-nodes: the Ray cluster has one node; runs on different "
                             "machines need a cluster of two or more")
        bundles = min(count, len(alive))
        bundle = {"CPU": 1, **({"GPU": 1} if gpus else {})}
        group = placement_group([bundle] * bundles, strategy="STRICT_SPREAD")
        try:
            self.ray.get(group.ready(), timeout=PLACEMENT_WAIT)
        except self.ray.exceptions.GetTimeoutError:
            self.ray.util.remove_placement_group(group)
            raise UsageError(f"--across-nodes: Ray found no {bundles} nodes with a free "
                             f"{'GPU' if gpus else 'CPU'} each within {PLACEMENT_WAIT:g} s") from None
        return group, bundles

    def submit(self, key: int, job: Job) -> None:
        options = dict(self.options)
        if self.group is not None and job.place is not None:
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                self.group, placement_group_bundle_index=job.place % self.bundles)
        ref = self.task.options(**options).remote(node.pack(job, self.address is not None))
        self.out[ref] = (key, job, time.monotonic())

    def collect(self, wait: float = 0.05) -> list[Finished]:
        if not self.out:
            return []
        ready, _ = self.ray.wait(list(self.out), num_returns=len(self.out), timeout=wait)
        return [self._finished(ref, *self.out.pop(ref)) for ref in ready]

    def _finished(self, ref: Any, key: int, job: Job, sent: float) -> Finished:
        try:
            got = self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:
            return self.lost(key, sent, exc)
        for rel, data in got["files"].items():
            path = os.path.join(job.folder, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as fh:
                fh.write(data)
        return Finished(key, got["exit_code"], got["seconds"], got["node"], got["steps"],
                        got["stopped"], got["stack"])

    def lost(self, key: int, sent: float, exc: Exception) -> Finished:
        """A task that gave no result: its node or worker died through every retry, or the
        task itself failed (an error of ours on that node)."""
        found = _NODE_IN_ERROR.search(str(exc))
        where = node_name(found.group(1)) if found else "a node Ray did not name"
        if isinstance(exc, self.ray.exceptions.RayTaskError):
            why = f"the Ray task failed on {where}: {' '.join(str(exc.cause).split())[:300]}"
        else:
            why = (f"lost with its node {where} ({type(exc).__name__}), "
                   f"after {RETRIES} retries by Ray")
        return Finished(key, None, time.monotonic() - sent, where, lost=why)

    def cancel(self) -> None:
        for ref in self.out:
            self.ray.cancel(ref)  # the task's watch ends its child
        self.out.clear()

    def close(self) -> None:
        self.cancel()
        if self.group is not None:
            self.ray.util.remove_placement_group(self.group)
            self.group = None
