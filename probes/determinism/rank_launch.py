"""Starting one distributed run: N worker processes, as ``torchrun`` starts them.

Every rank gets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR=127.0.0.1`` and a free
loopback ``MASTER_PORT`` of its own run, its own spec and trace. A :class:`RankGroup` stands
for the run where the orchestrator expects one process: when a rank fails, the others are
given a few seconds and then killed (they would wait in a collective until the process group's
timeout), and nothing is left behind when the audit stops.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

from audit.probes.determinism import merge
from audit.probes.determinism.knobs import KNOBS
from audit.probes.determinism.orchestrate import ROOT, Launcher, Outcome
from audit.probes.rng_escape import read_log
from audit.probes.trace import read_trace

#: Seconds the other ranks get to end on their own once one rank has failed.
GRACE_SECONDS = 5.0


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rank_env(knobs: list, rank: int, world: int, port: int) -> dict:
    """The environment of one rank: the knobs' part, our package first on the path, and the
    variables torchrun sets."""
    env = dict(os.environ)
    for knob in knobs:
        env.update(KNOBS[knob].env)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = ROOT + (os.pathsep + path if path else "")
    env.setdefault("MPLBACKEND", "Agg")
    loopback = "lo0" if sys.platform == "darwin" else "lo"
    env.setdefault("GLOO_SOCKET_IFNAME", loopback)  # loopback only
    env.setdefault("NCCL_SOCKET_IFNAME", loopback)
    env.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port)})
    return env


class RankGroup:
    """The rank processes of one run, answering ``poll``/``wait`` as one process would: the
    first failing rank's status, else 0."""

    def __init__(self, procs: list, logs: list):
        self.procs, self.logs = procs, logs
        self.failed_at: Optional[float] = None
        self.first_failed: Optional[int] = None  # the rank that failed first

    def poll(self) -> Optional[int]:
        codes = [p.poll() for p in self.procs]
        failed = [rank for rank, c in enumerate(codes) if c not in (None, 0)]
        if failed and self.failed_at is None:
            self.failed_at, self.first_failed = time.monotonic(), failed[0]
        if self.failed_at is not None and time.monotonic() - self.failed_at > GRACE_SECONDS:
            self.kill()
            codes = [p.wait() for p in self.procs]
        if any(c is None for c in codes):
            return None
        return 0 if self.first_failed is None else codes[self.first_failed]

    def wait(self) -> int:
        while True:
            code = self.poll()
            if code is not None:
                for log in self.logs:
                    log.close()
                return code
            time.sleep(0.02)

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            proc.wait()


@dataclass
class RankOutcome(Outcome):
    """A finished distributed run: the merged trace as ``records``, each rank's in ``ranks``."""

    ranks: list = field(default_factory=list)  # [records], rank order


class RankLauncher(Launcher):
    """A :class:`~audit.probes.determinism.orchestrate.Launcher` whose every run is ``nproc``
    ranks; keeps every finished run by name for the replica and sampler analysis."""

    def __init__(self, opts, folder: str, nproc: int, timeout: float):
        super().__init__(opts, folder)
        self.nproc, self.timeout = nproc, timeout
        self.finished: dict = {}  # run name -> RankOutcome
        self.live: list = []

    def spec(self, name: str, steps: int, knobs=(), detail=False, lockstep=None) -> dict:
        spec = super().spec(name, steps, knobs=knobs, detail=detail, lockstep=lockstep)
        base = spec["spec_path"][:-len(".json")]
        spec["rank_specs"] = []
        for rank in range(self.nproc):
            rs = dict(spec, trace=f"{base}.rank{rank}.trace", log=f"{base}.rank{rank}.log",
                      escape_log=f"{base}.rank{rank}.escapes",
                      dist={"nproc": self.nproc, "timeout": self.timeout})
            if lockstep:
                rs["lockstep"] = dict(lockstep, folder=os.path.join(lockstep["folder"], f"rank{rank}"))
            rs["spec_path"] = f"{base}.rank{rank}.json"
            rs.pop("rank_specs", None)
            with open(rs["spec_path"], "w", encoding="utf-8") as fh:
                json.dump(rs, fh)
            spec["rank_specs"].append(rs)
        return spec

    def start(self, spec: dict) -> tuple:
        port = free_port()
        procs, logs = [], []
        try:
            for rank, rs in enumerate(spec["rank_specs"]):
                log = open(rs["log"], "wb")
                logs.append(log)
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "audit.probes.worker", rs["spec_path"]],
                    env=rank_env(rs["knobs"], rank, self.nproc, port), cwd=self.opts.cwd,
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT))
        except BaseException:
            RankGroup(procs, logs).kill()
            for log in logs:
                log.close()
            raise
        group = RankGroup(procs, logs)
        self.live.append(group)
        return group, None, time.monotonic()

    def finish(self, spec: dict, proc, log, started: float) -> Outcome:
        code = proc.wait()
        self.live.remove(proc)
        traces = [read_trace(rs["trace"]) for rs in spec["rank_specs"]]
        escapes = [e for rs in spec["rank_specs"] for e in read_log(rs["escape_log"])]
        tails = []
        for rank, rs in enumerate(spec["rank_specs"]):
            with open(rs["log"], "rb") as fh:
                tail = fh.read()[-2000:].decode("utf-8", "replace").strip()
            if tail:
                tails.append(f"[rank {rank}] {tail}")
        out = RankOutcome(spec["name"], merge.merge(traces, blame=proc.first_failed), code, time.monotonic() - started,
                          escapes, "\n".join(tails), ranks=traces)
        self.finished[spec["name"]] = out
        return out

    def run_all(self, specs: list, jobs: int, on_done=None) -> list:
        try:
            return super().run_all(specs, jobs, on_done)
        finally:
            for group in list(self.live):
                group.kill()
                group.wait()
            self.live = []
