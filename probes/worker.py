"""One audited run: a fresh process that seeds, loads the target and trains under a trace.

Started by :mod:`audit.orchestrate` as ``python -m audit.worker SPEC.json``. It writes its
trace (JSON lines) to the path the spec names and exits with:
0 the steps ran; 3 the target could not be loaded or called (a usage error for the CLI);
4 training raised. Either way the trace's last record says what happened.
"""
from __future__ import annotations

import os
import sys
import traceback

from audit.probes.errors import UsageError
from audit.probes.spec import RunSpec, read_spec
from audit.probes.results.records import Record, Status

EXIT_OK, EXIT_TARGET, EXIT_CRASH = 0, 3, 4
#: Synthetic batches for a bare module when the audit chooses the steps (``audit resume``).
AUTO_BATCHES = 8


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA device; use --device cpu")
    return torch.device(name)


def environment(device) -> dict:
    """The machine and versions (:func:`audit.probes.environment.describe`) and the
    determinism flags in force."""
    from audit.probes.determinism import knobs
    from audit.probes.environment import describe

    return {**describe(device), "flags": knobs.flags()}


def run(spec: RunSpec) -> int:
    from audit.probes.determinism import knobs
    from audit.probes import rng_escape
    from audit.probes.trace import TraceWriter, run_traced

    writer = TraceWriter(spec.trace)
    lockstep = None
    tracker = None  # distributed runs: a rank's RankTracker (audit.probes.ranks)
    try:
        rng_escape.install(spec.escape_log, pin=False, seeds_path=spec.seed_log)
        knobs.observe()
        knobs.apply(spec.knobs, spec.escape_log, spec.pin_sites)
        if spec.jitter:
            knobs.jitter_workers()
        from audit.probes.seeding import seed_all

        seed_all(spec.seed)
        from audit.probes.target import TargetError, load_target

        writer.write({"type": Record.LOADING})  # progress: the watchdog's clock starts at the target
        rank_ctx = None
        if spec.dist:  # distributed: the process group exists before the target is called
            from audit.probes import ranks

            rank_ctx = ranks.start(spec.dist, resolve_device(spec.device))
        try:
            device = rank_ctx.device if rank_ctx else resolve_device(spec.device)
            setup = load_target(spec.target, input_shape=spec.input_shape,
                                num_classes=spec.num_classes, seed=spec.seed,
                                batches=spec.steps or AUTO_BATCHES)
        except (TargetError, RuntimeError) as exc:
            writer.write({"type": Record.END, "status": Status.TARGET_ERROR, "message": str(exc)})
            return EXIT_TARGET
        knobs.apply(spec.knobs, spec.escape_log, spec.pin_sites)  # again: the target may reset flags
        writer.write({"type": Record.ENV, "environment": environment(device),
                      "module_sources": knobs.module_sources(setup.model),
                      "synthetic": setup.synthetic, "description": setup.description})
        if rank_ctx is not None:
            tracker = ranks.prepare(setup, rank_ctx, writer, spec.seed)
        if spec.lockstep:
            from audit.probes.determinism.lockstep import Lockstep

            lockstep = Lockstep(spec.lockstep.folder, spec.lockstep.role,
                                rename=spec.lockstep.rename)
        steps, session = spec.steps, None
        if spec.resume:
            from audit.probes.resume.session import open_session

            session = open_session(spec.resume, setup, device, steps, writer)
            steps = session.steps
        done = run_traced(setup, steps, device, writer, detail=spec.detail,
                          lockstep=lockstep, session=session,
                          on_step=tracker.on_step if tracker else None)
        observed = knobs.observed()
        if spec.cuda_ops:  # after the traced steps, so the trace is untouched
            from audit.probes import seed_log
            from audit.probes.determinism.cuda_ops import scan_training

            seed_log.start(None)  # the scan's extra pass is not one of the compared runs'

            writer.write({"type": Record.CUDA_OPS, "scan": scan_training(setup, device).to_dict()})
        writer.write({"type": Record.END, "status": Status.OK if done >= steps else Status.ENDED_EARLY,
                      "steps": done, "observed": observed})
        return EXIT_OK
    except UsageError as exc:  # e.g. a checkpoint the target's load cannot read
        writer.write({"type": Record.END, "status": Status.TARGET_ERROR, "message": str(exc)})
        return EXIT_TARGET
    except BaseException as exc:  # the user's training raised: keep what was measured
        if isinstance(exc, KeyboardInterrupt):
            raise
        from audit.probes.runs import Frame, user_frame

        found = user_frame([Frame(f.filename, f.lineno or 0, f.name)
                            for f in reversed(traceback.extract_tb(exc.__traceback__))])
        where = found.where if found else None
        writer.write({"type": Record.END, "status": Status.CRASHED,
                      "message": f"{type(exc).__name__}: {exc}", "where": where,
                      "traceback": traceback.format_exc(limit=20)})
        return EXIT_CRASH
    finally:
        if lockstep is not None:
            lockstep.finish()
        if spec.dist:
            from audit.probes import ranks

            if tracker is not None:
                tracker.close()
            ranks.finish()
        writer.close()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from audit.probes.runs import answer_stack_requests

    answer_stack_requests()
    spec = read_spec(RunSpec, argv[0])
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    code = run(spec)
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
