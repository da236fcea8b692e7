"""Starting one distributed run: N processes, as ``torchrun`` starts its workers.

:class:`RankLauncher` starts every rank (``audit.probes.child.worker``; script mode's launchers
start the bootstrap instead) with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, its own spec and
trace; every rank joins its run's rendezvous store, which the audit hosts on a loopback port
(:mod:`audit.probes.run.rendezvous`, as torchrun's agent does). A :class:`RankGroup` stands for
the run where the :class:`~audit.probes.run.launcher.Launcher` expects one process: when a rank
fails, the others are given a few seconds and then killed (they would wait in a collective
until the process group's timeout), and nothing is left behind when the audit stops.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any, Optional, Sequence

from audit.probes.run import rendezvous
from audit.probes.run import merge
from audit.probes.progress import Reporter
from audit.probes.run.launcher import Launcher, Outcome, RunOptions, run_env
from audit.probes.run.escape_log import read_log
from audit.probes.run.processes import Run, child_argv, end_runs
from audit.probes.run.spec import DistSpec, LockstepSpec, RunSpec, write_spec
from audit.probes.run.trace import read_trace

#: Seconds the other ranks get to end on their own once one rank has failed.
GRACE_SECONDS = 5.0


def rank_env(knobs: list[str], rank: int, world: int, port: int) -> dict[str, Any]:
    """The environment of one rank: the knobs' part, our package first on the path, and the
    variables torchrun sets (the rendezvous: the store at ``port``, hosted by the audit)."""
    env = run_env(knobs)
    loopback = "lo0" if sys.platform == "darwin" else "lo"
    env.setdefault("GLOO_SOCKET_IFNAME", loopback)  # loopback only
    env.setdefault("NCCL_SOCKET_IFNAME", loopback)
    env.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                "LOCAL_WORLD_SIZE": str(world)})
    env.update(rendezvous.client_env(port))
    return env


class RankGroup:
    """The rank processes of one run (each a :class:`~audit.probes.run.processes.Run` in its own process
    group), answering as one run would: ``poll`` gives the first failing rank's status, else 0;
    once a rank has failed the others get :data:`GRACE_SECONDS`, then they are ended (they
    would wait in a collective until the process group's timeout)."""

    def __init__(self, runs: list[Run], store: Any = None):
        self.runs = runs
        self.store = store  # the run's rendezvous store (rendezvous.host_store), while it runs
        self.started = min(r.started for r in runs)
        self.failed_at: Optional[float] = None
        self.first_failed: Optional[int] = None  # the rank that failed first

    @property
    def steps(self) -> int:
        return min(r.steps for r in self.runs)

    def read_steps(self) -> int:
        for run in self.runs:
            run.read_steps()
        return self.steps

    def poll(self) -> Optional[int]:
        codes = [r.poll() for r in self.runs]
        failed = [rank for rank, c in enumerate(codes) if c not in (None, 0)]
        if failed and self.failed_at is None:
            self.failed_at, self.first_failed = time.monotonic(), failed[0]
        if self.failed_at is not None and time.monotonic() - self.failed_at > GRACE_SECONDS:
            end_runs([r for r, c in zip(self.runs, codes) if c is None])
            codes = [r.poll() for r in self.runs]
        if any(c is None for c in codes):
            return None
        return 0 if self.first_failed is None else codes[self.first_failed]

    def stalled(self, limit: Optional[float]) -> bool:
        return any(r.stalled(limit) for r in self.runs)

    def stack(self) -> str:
        return "\n".join(f"[rank {i}]\n{r.stack()}" for i, r in enumerate(self.runs))

    def end_when_done(self) -> int:
        for run in self.runs:
            run.end_when_done()
        self.store = None
        return self.poll() or 0

    def end(self) -> int:
        end_runs(self.runs)
        self.store = None
        return self.poll() or 0

    def output_tail(self) -> str:
        tails = [r.output_tail(2000).strip() for r in self.runs]
        return "\n".join(f"[rank {i}] {t}" for i, t in enumerate(tails) if t)


@dataclass
class RankOutcome(Outcome):
    """A finished distributed run: the merged trace as ``records``, each rank's in ``ranks``."""

    ranks: list[list[dict[str, Any]]] = field(default_factory=list)  # [records], rank order


class RankLauncher(Launcher):
    """A :class:`~audit.probes.run.launcher.Launcher` whose every run is ``nproc``
    ranks; keeps every finished run by name for the replica and sampler analysis. The ranks
    of a run rendezvous on this machine: they run here whatever the executor."""

    remote_runs = False

    def __init__(self, opts: RunOptions, folder: str, nproc: int, timeout: float, progress: Reporter = None):
        super().__init__(opts, folder, progress)
        self.nproc, self.timeout = nproc, timeout
        self.finished: dict[str, Any] = {}  # run name -> RankOutcome

    # resume= and cuda_ops= pass through by keyword only
    def spec(self, name: str, steps: int, knobs: Sequence[str] = (),  # type: ignore[override]
             detail: bool = False, lockstep: Optional[LockstepSpec] = None, **more: Any) -> RunSpec:
        spec = super().spec(name, steps, knobs=knobs, detail=detail, lockstep=lockstep, **more)
        base = spec.spec_path[:-len(".json")]
        for rank in range(self.nproc):
            rs = replace(spec, trace=f"{base}.rank{rank}.trace", log=f"{base}.rank{rank}.log",
                         escape_log=f"{base}.rank{rank}.escapes",
                         seed_log=f"{base}.rank{rank}.seeds",
                         dist=DistSpec(nproc=self.nproc, timeout=self.timeout), rank_specs=[])
            if lockstep:
                rs.lockstep = replace(lockstep, folder=os.path.join(lockstep.folder, f"rank{rank}"))
            write_spec(rs, f"{base}.rank{rank}.json")
            spec.rank_specs.append(rs)
        return spec

    def command(self, rs: RunSpec) -> list[Any]:
        """The argv of one rank."""
        return child_argv("audit.probes.child.worker", rs.spec_path)

    def environment(self, rs: RunSpec, rank: int, port: int) -> dict[str, Any]:
        """The environment of one rank, started as torchrun starts one."""
        return rank_env(rs.knobs, rank, self.nproc, port)

    # a distributed run is a group of ranks, used where the base class uses a Run
    def start(self, spec: RunSpec) -> RankGroup:  # type: ignore[override]
        store = rendezvous.host_store(self.nproc)
        runs: list[Any] = []
        try:
            for rank, rs in enumerate(spec.rank_specs):
                runs.append(Run(self.command(rs), rs.log, rs.trace,
                                self.environment(rs, rank, store.port), cwd=self.opts.cwd,
                                stdin_path=self.stdin_path))
        except BaseException:
            end_runs(runs)
            raise
        return RankGroup(runs, store)

    def finish(self, spec: RunSpec, group: RankGroup,  # type: ignore[override]  # see start()
               stopped: str = "", stack: str = "") -> Outcome:
        code = group.end() if stopped else group.end_when_done()
        traces = [read_trace(rs.trace) for rs in spec.rank_specs]
        escapes = [e for rs in spec.rank_specs for e in read_log(rs.escape_log)]
        out = RankOutcome(spec.name, merge.merge(traces, blame=group.first_failed),
                          None if stopped else code, time.monotonic() - group.started, escapes,
                          group.output_tail(), stopped, stack, ranks=traces)
        self.finished[spec.name] = out
        return out
