"""One audited run: a fresh process that seeds, loads the target and trains under a trace.

Started by :class:`audit.probes.run.launcher.Launcher` as ``python -m audit.probes.child.worker
SPEC.json`` would start it (:func:`audit.probes.run.processes.child_argv`). It writes its
trace (JSON lines) to the path the spec names and exits with a
:class:`audit.probes.errors.ChildExit`: ``OK`` (0) the steps ran; ``TARGET`` (3) the target could
not be loaded or called (a usage error for the CLI); ``CRASH`` (4) training raised. Either way
the trace's last record says what happened.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional
import os
import sys
import traceback

from audit.probes.errors import ChildExit, UsageError
from audit.probes.run.environment import resolve_device
from audit.probes.run.knobs import describe_run as environment
from audit.probes.run.spec import RunSpec, read_spec
from audit.probes.results.records import Record, Status

if TYPE_CHECKING:  # torch: imported when the run starts
    from audit.probes.run.lockstep import Lockstep
    from audit.probes.run.ranks import RankTracker

#: Synthetic batches for a bare module when the audit chooses the steps (``audit resume``).
AUTO_BATCHES = 8


class _TargetFailed(Exception):
    """The target could not be loaded or called (the run's ``target_error``)."""


class WorkerRun:
    """One traced run's steps (see :func:`run`); :meth:`close` ends what it started."""

    def __init__(self, spec: RunSpec, writer: Any) -> None:
        self.spec, self.writer = spec, writer
        self.lockstep: Optional[Lockstep] = None
        self.tracker: Optional[RankTracker] = None  # distributed runs: a rank's RankTracker (audit.probes.run.ranks)

    def observe_and_seed(self) -> None:
        """Escape tracing, the knob observers and the knobs asked for, then the seed."""
        from audit.probes.run import rng_escape
        from audit.probes.run import knobs

        spec = self.spec
        rng_escape.install(spec.escape_log, pin=False, seeds_path=spec.seed_log)
        knobs.observe()
        knobs.apply(spec.knobs, spec.escape_log, spec.pin_sites)
        if spec.jitter:
            knobs.jitter_workers()
        from audit.probes.run.seeding import seed_all

        seed_all(spec.seed)

    def load(self) -> tuple[Any, ...]:
        """``(setup, device, rank context)``; raises :class:`_TargetFailed`."""
        from audit.probes.run.target import TargetError, load_target

        spec = self.spec
        self.writer.write({"type": Record.LOADING})  # progress: the watchdog's clock starts here
        rank_ctx = None
        if spec.dist:  # distributed: the process group exists before the target is called
            from audit.probes.run import ranks

            rank_ctx = ranks.start(spec.dist, resolve_device(spec.device))
        try:
            device = rank_ctx.device if rank_ctx else resolve_device(spec.device)
            setup = load_target(spec.target, input_shape=spec.input_shape,
                                num_classes=spec.num_classes, seed=spec.seed,
                                batches=spec.steps or AUTO_BATCHES)
        except (TargetError, RuntimeError) as exc:
            raise _TargetFailed(str(exc)) from None
        return setup, device, rank_ctx

    def prepare(self, setup: Any, device: Any, rank_ctx: Any) -> None:
        """The knobs again (the target may reset flags), the ``env`` record, the DDP wrap and
        the replay partner."""
        from audit.probes.run import knobs
        from audit.probes.run.environment import code_fingerprint

        spec = self.spec
        knobs.apply(spec.knobs, spec.escape_log, spec.pin_sites)
        self.writer.write({"type": Record.ENV, "environment": environment(device),
                           "code": code_fingerprint([setup.model]),
                           "module_sources": knobs.module_sources(setup.model),
                           "synthetic": setup.synthetic, "description": setup.description})
        if rank_ctx is not None:
            from audit.probes.run import ranks

            self.tracker = ranks.prepare(setup, rank_ctx, self.writer, spec.seed)
        if spec.lockstep:
            from audit.probes.run.lockstep import Lockstep

            self.lockstep = Lockstep(spec.lockstep.folder, spec.lockstep.role,
                                     rename=spec.lockstep.rename)

    def train(self, setup: Any, device: Any) -> tuple[Any, ...]:
        """The traced steps (an ``audit resume`` role around them); ``(done, asked)``."""
        from audit.probes.run.trace import run_traced

        steps, session = self.spec.steps, None
        if self.spec.resume:
            from audit.probes.resume.session import open_session

            session = open_session(self.spec.resume, setup, device, steps, self.writer)
            steps = session.steps
        done = run_traced(setup, steps, device, self.writer, detail=self.spec.detail,
                          lockstep=self.lockstep, session=session,
                          on_step=self.tracker.on_step if self.tracker else None)
        if self.tracker is not None:
            self.tracker.write_samplers()
        return done, steps

    def scan_cuda_ops(self, setup: Any, device: Any) -> None:
        """After the traced steps, so the trace is untouched."""
        from audit.probes.run import seed_log
        from audit.probes.determinism.cuda_ops import scan_training

        seed_log.start(None)  # the scan's extra pass is not one of the compared runs'
        self.writer.write({"type": Record.CUDA_OPS, "scan": scan_training(setup, device).to_dict()})

    def close(self) -> None:
        if self.lockstep is not None:
            self.lockstep.finish()
        if self.spec.dist:
            from audit.probes.run import ranks

            if self.tracker is not None:
                self.tracker.close()
            ranks.finish()


def _steps(worker: WorkerRun) -> dict[str, Any]:
    """Everything from the seed to the last step; the ``end`` record's fields."""
    from audit.probes.run import rng_escape
    from audit.probes.run import knobs

    worker.observe_and_seed()
    setup, device, rank_ctx = worker.load()
    worker.prepare(setup, device, rank_ctx)
    done, steps = worker.train(setup, device)
    rng_escape.finish()  # what became of the generators made without a seed
    observed = knobs.observed()
    if worker.spec.cuda_ops:
        worker.scan_cuda_ops(setup, device)
    return {"status": Status.OK if done >= steps else Status.ENDED_EARLY, "steps": done,
            "observed": observed}


def _crash(exc: BaseException) -> dict[str, Any]:
    """The ``end`` record's fields for a run whose training raised."""
    from audit.probes.run.processes import Frame, user_frame

    found = user_frame([Frame(f.filename, f.lineno or 0, f.name)
                        for f in reversed(traceback.extract_tb(exc.__traceback__))])
    return {"status": Status.CRASHED, "message": f"{type(exc).__name__}: {exc}",
            "where": found.where if found else None,
            "traceback": traceback.format_exc(limit=20)}


def run(spec: RunSpec) -> int:
    """Seed, load the target and train under a trace; the trace's last record says how it
    ended. Returns the exit status."""
    from audit.probes.run.trace import TraceWriter

    writer = TraceWriter(spec.trace)
    worker = WorkerRun(spec, writer)
    try:
        try:
            end, code = _steps(worker), ChildExit.OK
        except (_TargetFailed, UsageError) as exc:  # UsageError: e.g. a checkpoint load cannot read
            end, code = {"status": Status.TARGET_ERROR, "message": str(exc)}, ChildExit.TARGET
        except BaseException as exc:  # the user's training raised: keep what was measured
            if isinstance(exc, KeyboardInterrupt):
                raise
            end, code = _crash(exc), ChildExit.CRASH
        writer.write({"type": Record.END, **end})
        return code
    finally:
        worker.close()
        writer.close()


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from audit.probes.run.processes import answer_stack_requests

    answer_stack_requests()
    spec = read_spec(RunSpec, argv[0])
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    code = run(spec)
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
