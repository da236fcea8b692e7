"""What a remote executor runs on a node: one job in a temporary folder of that node.

The job's paths under the audit's work folder are moved to the node's folder (argv, the spec
files' string values), as are paths under the audit's working folder when the code came by the
cluster's runtime environment; the child runs under the node's own interpreter and is watched
as the local executor watches it; every file it wrote comes back as bytes, the node's folder
named as the audit's in them. Light: no torch, no Ray.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Optional

from audit.probes.run.executors.base import Job
from audit.probes.run.executors.local import Ended, check
from audit.probes.run.processes import Run, end_runs

#: Seconds between two looks at a running child.
TICK = 0.05


def pack(job: Job, moved_cwd: bool) -> dict[str, Any]:
    """What a node needs to run ``job``: plain data and the input files' bytes."""
    inputs = {}
    for path in dict.fromkeys([*job.inputs, *([job.stdin] if job.stdin else [])]):
        with open(path, "rb") as fh:
            inputs[os.path.relpath(path, job.folder)] = fh.read()
    env = {k: v for k, v in job.env.items() if not _machine_bound(k)} if moved_cwd else job.env
    return {"argv": job.argv, "env": env, "log": job.log, "folder": job.folder,
            "inputs": inputs, "cwd": job.cwd or os.getcwd(), "moved_cwd": moved_cwd,
            "stdin": job.stdin, "trace": job.trace, "timeout": job.timeout,
            "python": sys.executable}


#: Variables that describe the machine the audit runs on, not the run: a node keeps its own.
MACHINE_BOUND = frozenset({"PATH", "HOME", "PWD", "OLDPWD", "SHELL", "USER", "LOGNAME", "HOSTNAME",
                           "TMPDIR", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONHOME",
                           "CUDA_VISIBLE_DEVICES", "DISPLAY", "TERM", "_"})
_MACHINE_PREFIXES = ("RAY_", "SSH_", "XDG_", "CONDA_")


def _machine_bound(name: str) -> bool:
    return name in MACHINE_BOUND or name.startswith(_MACHINE_PREFIXES)


def relocate(value: Any, moves: dict[str, str]) -> Any:
    """``value`` (a path, or JSON data holding paths) with every path under a key of ``moves``
    put under its value instead."""
    if isinstance(value, str):
        for old, new in moves.items():
            if value == old or value.startswith(old.rstrip(os.sep) + os.sep):
                return new + value[len(old):]
        return value
    if isinstance(value, list):
        return [relocate(v, moves) for v in value]
    if isinstance(value, dict):
        return {k: relocate(v, moves) for k, v in value.items()}
    return value


def _write_inputs(payload: dict[str, Any], here: str, moves: dict[str, str]) -> None:
    for rel, data in payload["inputs"].items():
        path = os.path.join(here, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if rel.endswith(".json"):  # a spec: its paths moved too
            data = json.dumps(relocate(json.loads(data), moves)).encode()
        with open(path, "wb") as fh:
            fh.write(data)


def _files_back(here: str, inputs: dict[str, bytes], folder: str) -> dict[str, bytes]:
    """Every file the child wrote under ``here``, the node's folder named as ``folder``."""
    same = json.dumps(folder)[1:-1] == folder  # a path JSON writes as it is
    out = {}
    for root, _, names in os.walk(here):
        for name in names:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, here)
            if rel in inputs:
                continue
            with open(path, "rb") as fh:
                data = fh.read()
            out[rel] = data.replace(here.encode(), folder.encode()) if same else data
    return out


def run_here(payload: dict[str, Any]) -> dict[str, Any]:
    """Run a packed job on this node; returns its exit code, how it stopped, its stacks, steps,
    seconds and the files it wrote (relative to the audit's work folder)."""
    here = tempfile.mkdtemp(prefix="audit-run-")
    try:
        moves = {payload["folder"]: here}
        if payload["moved_cwd"]:  # the code came by the runtime environment: its folder is ours
            moves[payload["cwd"]] = os.getcwd()
        _write_inputs(payload, here, moves)
        argv = [sys.executable if a == payload["python"] else relocate(a, moves)
                for a in payload["argv"]]
        env = dict(os.environ)
        env.update(payload["env"])
        cwd = os.getcwd() if payload["moved_cwd"] else payload["cwd"]
        run = Run(argv, relocate(payload["log"], moves), relocate(payload["trace"], moves), env,
                  cwd=cwd, stdin_path=relocate(payload["stdin"], moves))
        code, stopped, stack = watch(run, payload["timeout"])
        return {"exit_code": code, "stopped": stopped, "stack": stack, "steps": run.steps,
                "seconds": time.monotonic() - run.started,
                "files": _files_back(here, payload["inputs"], payload["folder"])}
    finally:
        shutil.rmtree(here, ignore_errors=True)


def watch(run: Run, timeout: Optional[float]) -> Ended:
    """Wait for ``run`` as the local executor does; a cancel (KeyboardInterrupt) ends it."""
    try:
        while True:
            ended = check(run, timeout)
            if ended is not None:
                return ended
            time.sleep(TICK)
    finally:
        end_runs([run])
