"""Script mode over ranks: ``audit determinism -- torchrun --nproc_per_node N train.py``,
``--nproc N -- python train.py``, and scripts that start their ranks with
``torch.multiprocessing.spawn``.

With a launcher command (or ``--nproc``) every run is N processes the audit starts as torchrun
would (:class:`ScriptRankLauncher`), each running the unmodified script under the bootstrap
with its own trace. A plain script runs as one process (:class:`SpawnLauncher`); when it
starts ranks with ``torch.multiprocessing``, their traces (named by the script's ``spawn``
record) become the run's. Either way the runs' merged traces are compared as in target mode's
``--nproc``, and :func:`~audit.probes.determinism.distributed.annotate` adds what only ranks
show (replicas, samplers, the rank of the first parting).
"""
from __future__ import annotations

import dataclasses
import glob
import os
import time
from dataclasses import dataclass
from typing import Any, Optional

from audit.probes.progress import Reporter
from audit.probes.script import torchrun as script_launch

from audit.probes.run import program as script_runner, seed_log
from audit.probes.run import merge
from audit.probes.determinism.distributed import annotate
from audit.probes.run.executors import Finished
from audit.probes.run.launcher import Launcher, Outcome, RunOptions
from audit.probes.determinism.orchestrate import audit_determinism
from audit.probes.run.rank_launch import RankGroup, RankLauncher, RankOutcome, rank_env
from audit.probes.errors import ChildExit
from audit.probes.results import DeterminismResult
from audit.probes.results.records import Record, Status
from audit.probes.run.escape_log import read_log
from audit.probes.run.processes import STEP_PREFIX, Run
from audit.probes.run.spec import DistSpec, RunSpec
from audit.probes.run.trace import read_trace

#: End statuses of a rank that failed (a rank killed by its peers' failure may have none).
FAILED = (Status.CRASHED, Status.TARGET_ERROR, Status.EXITED)


def audit_script(opts: RunOptions, nproc: int = 1,
                 progress: Reporter = None,
                 keep: Optional[str] = None) -> DeterminismResult:
    """The determinism audit of a script command, ranks included (``nproc``: ``--nproc``);
    ``keep``: a folder where the runs' specs and traces stay."""
    assert opts.script is not None  # script mode
    ranks = nproc > 1 or script_launch.is_launch(opts.script)  # torchrun sets RANK etc., even for 1
    nproc, python = script_launch.python_command(opts.script, nproc)
    launchers: list[Any] = []
    if keep:
        os.makedirs(keep, exist_ok=True)

    def make(o: RunOptions, folder: str, reporter: Reporter = None) -> Launcher:
        launchers.append(ScriptRankLauncher(o, folder, nproc, reporter) if ranks
                         else SpawnLauncher(o, folder, reporter))
        return launchers[-1]

    result = audit_determinism(dataclasses.replace(opts, script=python), progress=progress,
                               keep=keep, launcher=make)
    result.target = " ".join(opts.script)
    launcher = launchers[0]
    if launcher.nproc > 1:
        annotate(result, launcher, opts.runs, launcher.nproc)
    return result


def torchrun_env(knobs: list[str], rank: int, world: int, port: int) -> dict[str, Any]:
    """Target mode's rank environment plus what else torchrun gives a single-node worker."""
    env = rank_env(knobs, rank, world, port)
    env.update({"GROUP_RANK": "0", "GROUP_WORLD_SIZE": "1", "ROLE_RANK": str(rank),
                "ROLE_WORLD_SIZE": str(world), "ROLE_NAME": "default",
                "TORCHELASTIC_RESTART_COUNT": "0", "TORCHELASTIC_MAX_RESTARTS": "0",
                "TORCHELASTIC_RUN_ID": "none"})
    if world > 1:
        env.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default for several ranks
    return env


@dataclass
class RankFiles:
    """Where one rank writes: its trace, escape log and seed log."""

    trace: str
    escape_log: str
    seed_log: str


def first_failed(files: list[RankFiles], traces: list[list[dict[str, Any]]]) -> Optional[int]:
    """The failed rank whose trace was written last the earliest: a rank's failure ends its
    trace before its peers see the connection close and fail in turn."""
    failed = [rank for rank, t in enumerate(traces)
              if (next((r for r in reversed(t) if r.get("type") == Record.END), None) or {}).get("status")
              in FAILED]

    def written(rank: int) -> float:
        try:
            return os.stat(files[rank].trace).st_mtime_ns
        except OSError:
            return float("inf")

    return min(failed, key=written) if failed else None


def rank_outcome(name: str, files: list[RankFiles], code: Optional[int], seconds: float, tail: str,
                 stopped: str = "", stack: str = "") -> RankOutcome:
    """A run made of ranks: their traces merged (the end of the rank that failed first speaks
    for the run), escapes and seeding calls in rank order."""
    traces = [read_trace(f.trace) for f in files]
    blame = first_failed(files, traces)
    return RankOutcome(name, merge.merge(traces, blame=blame), code, seconds,
                       escapes=[e for f in files for e in read_log(f.escape_log)],
                       output_tail=tail, stopped=stopped, stack=stack,
                       seeds=[s for f in files for s in seed_log.read(f.seed_log)], ranks=traces)


class ScriptRankLauncher(RankLauncher):
    """Every run is ``nproc`` bootstrap processes started as torchrun starts its workers."""

    def __init__(self, opts: RunOptions, folder: str, nproc: int, progress: Reporter = None) -> None:
        super().__init__(opts, folder, nproc, DistSpec(nproc).timeout, progress)

    def command(self, rs: RunSpec) -> list[Any]:
        return script_runner.command(rs)

    def environment(self, rs: RunSpec, rank: int, port: int) -> dict[str, Any]:
        return torchrun_env(rs.knobs, rank, self.nproc, port)

    def finish(self, spec: RunSpec, group: RankGroup,  # type: ignore[override]  # RankLauncher's
               stopped: str = "", stack: str = "") -> RankOutcome:
        code = group.end() if stopped else group.end_when_done()
        files = [RankFiles(rs.trace, rs.escape_log, rs.seed_log) for rs in spec.rank_specs]
        out = rank_outcome(spec.name, files, None if stopped else code,
                           time.monotonic() - group.started, group.output_tail(), stopped, stack)
        self.finished[spec.name] = out
        return out


class SpawnRun(Run):
    """A script's process whose progress is also its spawned ranks' (``TRACE.rank{i}``): once
    they exist, its steps are the fewest any rank has made, and any rank's record is progress."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ranks: dict[str, Any] = {}  # path -> [offset, steps]
        self.own = 0  # the script's own process's steps

    def read_steps(self) -> int:
        self.steps = self.own
        self.own = own = super().read_steps()
        assert self.trace_path is not None  # a script's run always writes a trace
        for path in glob.glob(glob.escape(self.trace_path) + ".rank*"):
            self.ranks.setdefault(path, [0, 0])
        for path, state in self.ranks.items():
            try:
                with open(path, "rb") as fh:
                    fh.seek(state[0])
                    data = fh.read()
            except OSError:
                continue
            complete = data[:data.rfind(b"\n") + 1]
            if complete:
                state[0] += len(complete)
                state[1] += sum(1 for line in complete.split(b"\n") if line.startswith(STEP_PREFIX))
                self.last_progress = time.monotonic()
        self.steps = min(s[1] for s in self.ranks.values()) if self.ranks else own
        return self.steps


class SpawnLauncher(Launcher):
    """One process per run, as in plain script mode; a run whose script started ranks with
    ``torch.multiprocessing`` is those ranks (``nproc``: the most any run started)."""

    def __init__(self, opts: RunOptions, folder: str, progress: Reporter = None) -> None:
        super().__init__(opts, folder, progress)
        self.nproc = 1
        self.finished: dict[str, Any] = {}  # run name -> RankOutcome, runs that spawned ranks

    def start(self, spec: RunSpec) -> SpawnRun:
        return SpawnRun(script_runner.command(spec), spec.log, spec.trace,
                        self._env(spec.knobs), cwd=self.opts.cwd, stdin_path=self.stdin_path)

    def finish(self, spec: RunSpec, run: Run, stopped: str = "", stack: str = "") -> Outcome:
        return self._ranks(spec, super().finish(spec, run, stopped, stack))

    def arrived(self, spec: RunSpec, done: Finished) -> Outcome:
        return self._ranks(spec, super().arrived(spec, done))

    def _ranks(self, spec: RunSpec, out: Outcome) -> Outcome:
        """The run, or the ranks its script spawned when it spawned some."""
        spawned = next((r for r in out.records if r.get("type") == Record.SPAWN), None)
        if spawned is None:
            return out
        files = [RankFiles(*f) for f in zip(spawned["traces"], spawned["escape_logs"],
                                             spawned["seed_logs"])]
        ranks = rank_outcome(spec.name, files, out.exit_code, out.seconds, out.output_tail,
                             out.stopped, out.stack)
        if ranks.end.get("status") in (Status.OK, Status.ENDED_EARLY) and out.exit_code is not None:
            ranks.exit_code = ChildExit.OK  # the script's own process traced nothing: its ranks did
        self.nproc = max(self.nproc, int(spawned["nprocs"]))
        self.finished[spec.name] = ranks
        return ranks
