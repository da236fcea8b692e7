"""Script mode's bootstrap: runs an unmodified training script under the audit's hooks.

Started by :class:`audit.probes.run.launcher.Launcher` (and, for ranks, the script launchers of
:mod:`audit.probes.determinism.script_launcher`) through :func:`audit.probes.run.program.command`,
a :func:`audit.probes.run.processes.child_argv`, as what amounts to::

    python -m audit.probes.child.bootstrap SPEC.json -- train.py args...
    python -m audit.probes.child.bootstrap SPEC.json -- -m package.module args...

but with the tool imported from where it is installed, never from the working folder.

Before the script's own code runs it starts the RNG escape tracing (:mod:`audit.probes.run.rng_escape`),
the knob observers, the knobs the spec asks for, the rank observer or ``mp.spawn`` patch
(:mod:`audit.probes.script.ranks`) and a :class:`audit.probes.script.tracer.ScriptTracer` with
its :class:`audit.probes.script.draws.DrawWatch`. The script then runs
as ``python train.py`` would run it: as ``__main__``, with its own ``sys.argv``, its folder
first on ``sys.path`` (the working folder for ``-m``), the working folder, standard streams and
seeding it was given. The audit observes; it seeds nothing.

The trace's last record says how the run ended: ``ok`` (the steps asked for were made and the
run was stopped there), ``ended_early`` (the script returned, or exited with status 0, sooner),
``exited`` (``sys.exit`` / ``os._exit`` with another status: ``exit_code``), ``crashed`` (an
exception: ``message``, ``where`` in the script, ``traceback``; what was measured is kept), or
``target_error`` when no optimizer step happened at all (the CLI's one-line usage error).
Exit status (:class:`audit.probes.errors.ChildExit`): ``OK``, or ``TARGET`` for ``target_error``,
``CRASH`` for ``crashed`` (as :mod:`audit.probes.child.worker`).
"""
from __future__ import annotations

import io
import os
import sys
import traceback
from typing import TYPE_CHECKING, Any, Callable, NoReturn, Optional, Protocol

from audit.probes.errors import ChildExit
from audit.probes.run.spec import RunSpec, read_spec
from audit.probes.results.records import Record, Status

if TYPE_CHECKING:  # imported where they are used: torch only once the spec has set the device
    from audit.probes.run.lockstep import Lockstep
    from audit.probes.run.program import Program
    from audit.probes.run.trace import TraceWriter
    from audit.probes.script.tracer import ScriptTracer

#: :func:`run` by import path, for ``torch.multiprocessing`` children (this module is ``__main__``).
RUNNER = "audit.probes.child.bootstrap:run"
STDIN_HELP = ("the script reads standard input, and the audit runs it several times, so it "
              "cannot type into it at a terminal: give the input through a pipe or a file, "
              "e.g. printf 'yes\\n' | audit determinism -- python train.py (every run reads the "
              "same bytes)")


class StdinNeeded(EOFError):
    """The script read stdin while the tool's stdin is a terminal (an ``EOFError``, as a
    closed stdin gives, so the script's own handling of end of input still applies)."""


class _TerminalStdin(io.TextIOBase):
    """``sys.stdin`` of a run whose tool sits at a terminal: reading it says how to give the
    input instead of waiting for keys nobody will press."""

    def readable(self) -> bool:
        return True

    def read(self, size: Optional[int] = -1) -> NoReturn:
        raise StdinNeeded(STDIN_HELP)

    def readline(self, size: Optional[int] = -1) -> NoReturn:
        raise StdinNeeded(STDIN_HELP)

    def readlines(self, hint: int = -1) -> NoReturn:
        raise StdinNeeded(STDIN_HELP)

    def isatty(self) -> bool:
        return False


class _Run:
    """The end of one run, written once whichever way the script ends."""

    def __init__(self, spec: RunSpec, writer: TraceWriter, tracer: Optional[ScriptTracer]):
        self.spec, self.writer, self.tracer = spec, writer, tracer
        self.written = False

    def end(self, status: str, exit_code: int = 0, message: str = "", **extra: Any) -> int:
        from audit.probes.run import rng_escape
        from audit.probes.run import knobs

        if self.written:
            return ChildExit.OK
        self.written = True
        rng_escape.finish()  # what became of the generators made without a seed
        said = extra.pop("said", False)  # the script printed its own message (sys.exit("..."))
        steps = self.tracer.done if self.tracer is not None else 0
        if extra.get("stdin"):
            message = f"{STDIN_HELP} (at {extra['where']})" if extra.get("where") else STDIN_HELP
            status = Status.TARGET_ERROR if steps == 0 else Status.CRASHED
        elif steps == 0 and status != "crashed_setup":
            if status == Status.EXITED and not said:
                message = _last_output_line(self.spec.log) or message
            status, message = Status.TARGET_ERROR, _no_step_message(status, exit_code, message, extra)
            extra = {}
        elif status == "crashed_setup":
            status = Status.CRASHED
        elif status in (Status.ENDED_EARLY, Status.EXITED) and steps >= self.spec.steps:
            status = Status.OK
        record = {"type": Record.END, "status": status, "steps": steps, "exit_code": exit_code,
                  "message": message, "observed": knobs.observed(), **extra}
        self.writer.write(record)
        return {Status.TARGET_ERROR: ChildExit.TARGET,
                Status.CRASHED: ChildExit.CRASH}.get(status, ChildExit.OK)


def _no_step_message(status: str, exit_code: int, message: str, extra: dict[str, Any]) -> str:
    tail = ("the audit counts a step each time a torch.optim optimizer's step() runs, or "
            "each backward pass when the script makes no optimizer; does the script train, "
            "with these arguments?")
    if status == Status.CRASHED:
        where = f" (at {extra['where']})" if extra.get("where") else ""
        return f"the script crashed before its first optimizer step: {message}{where}"
    if status == Status.EXITED:
        return f"the script exited with status {exit_code} before its first optimizer step" + (
            f": {message}" if message and not message.startswith("the script called") else "")
    return f"the script ended without an optimizer step: {tail}"


def _last_output_line(log: str | None) -> str:
    """The script's last line of output (argparse's error, a message before ``sys.exit(1)``)."""
    if not log:
        return ""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        with open(log, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(fh.tell() - 2000, 0))
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    return next((line.strip() for line in reversed(lines) if line.strip()), "")[:300]


def _exit_code(exc: SystemExit) -> tuple[int, str]:
    """What Python makes of ``sys.exit(code)``: the status, and a message printed to stderr."""
    code = exc.code
    if code is None:
        return 0, ""
    if isinstance(code, bool) or not isinstance(code, int):
        print(code, file=sys.stderr)
        return 1, str(code)
    return code, ""


def _crash(exc: BaseException) -> dict[str, Any]:
    """message, where (the innermost frame in the user's code) and a traceback from the script
    down (the bootstrap's and runpy's frames left out)."""
    from audit.probes.run.processes import is_user_file, place

    frames = traceback.extract_tb(exc.__traceback__)
    where = next((place(f.filename, f.lineno or 0) for f in reversed(frames)
                  if is_user_file(f.filename)), None)
    tb = exc.__traceback__
    while tb is not None and not is_user_file(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__, limit=30))
    return {"message": f"{type(exc).__name__}: {exc}", "where": where, "traceback": text[-8000:],
            "stdin": isinstance(exc, StdinNeeded)}


def _warm_lazy_imports() -> None:
    """Make torch import now what it imports at a script's first optimizer (its compiler stack,
    sympy): libraries that create OS-seeded generators at import time would otherwise be seen
    making them at the script's ``optimizer = ...`` line. The script pays this import anyway."""
    import torch

    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


def _pin_global_generators() -> None:
    """The ``seed_escapes`` knob in script mode: the global generators (torch's, NumPy's and
    Python's), which start from another state in every process, start from fixed seeds instead
    (the script's own seeding still wins)."""
    import random
    import zlib

    import numpy as np

    from audit.probes.run import rng_escape

    np.random.seed(zlib.crc32(b"numpy.random global"))
    random.seed(zlib.crc32(b"random global"))
    rng_escape.seeding_helpers()(zlib.crc32(b"torch global"))  # CUDA too, when there is one


def _start_observing(spec: RunSpec) -> None:
    """Escape tracing, the knob observers and the knobs asked for, before the script runs."""
    from audit.probes.run import rng_escape
    from audit.probes.run import knobs

    _warm_lazy_imports()
    rng_escape.install(spec.escape_log, pin=False, seeds_path=spec.seed_log)
    knobs.observe()
    knobs.apply(spec.knobs, spec.escape_log, spec.pin_sites)
    if spec.jitter:
        knobs.jitter_workers()
    if "seed_escapes" in spec.knobs:
        _pin_global_generators()


def _lockstep(spec: RunSpec) -> Optional[Lockstep]:
    """The replay partner the spec asks for (None: not a replay)."""
    if not spec.lockstep:
        return None
    from audit.probes.run.lockstep import Lockstep

    return Lockstep(spec.lockstep.folder, spec.lockstep.role, rename=spec.lockstep.rename)


class _Exit(Protocol):
    """``os._exit``'s type."""

    def __call__(self, status: int) -> NoReturn: ...


def _exit_hook(run_end: _Run, tracer: ScriptTracer, lockstep: Optional[Lockstep],
               real_exit: _Exit) -> _Exit:
    """``os._exit`` for the script: it skips every finally, so the end is written first (in
    the main process)."""
    main_pid = os.getpid()
    writer = run_end.writer

    def os_exit(status: int) -> NoReturn:
        if os.getpid() == main_pid:
            tracer.uninstall()
            run_end.end(Status.ENDED_EARLY if status == 0 else Status.EXITED, status,
                        f"the script called os._exit({status}) after {tracer.done} steps")
            if lockstep is not None:
                lockstep.finish()
            writer.close()
            sys.stdout.flush()
            sys.stderr.flush()
        real_exit(status)

    return os_exit


def _run_script(program: Optional[Program], tracer: ScriptTracer, run_end: _Run,
                call: Optional[Callable[[], Any]] = None) -> int:
    """Run the program as ``python`` would (or ``call``, a spawned rank's function), under the
    installed tracer; the end record's status."""
    import runpy

    from audit.probes.script.tracer import StopScript

    if program is not None:
        sys.argv = [program.target, *program.args]
        sys.path.insert(0, os.getcwd() if program.path is None
                        else os.path.dirname(os.path.abspath(program.path)))
    try:
        if call is not None:
            call()
        elif program is not None and program.module:
            runpy.run_module(program.module, run_name="__main__", alter_sys=True)
        else:
            assert program is not None and program.path is not None  # parse gives one of the two
            runpy.run_path(program.path, run_name="__main__")
        tracer.uninstall()
        return run_end.end(Status.ENDED_EARLY,
                           message=f"the script returned after {tracer.done} steps")
    except StopScript:
        tracer.uninstall()
        return run_end.end(Status.OK)
    except SystemExit as exc:
        tracer.uninstall()
        code, text = _exit_code(exc)
        message = text or f"the script called sys.exit({exc.code!r}) after {tracer.done} steps"
        return run_end.end(Status.ENDED_EARLY if code == 0 else Status.EXITED, code, message, said=bool(text))
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        tracer.uninstall()
        if tracer.stopped:  # raised while unwinding from the stop: the steps were made
            return run_end.end(Status.OK)
        details = _crash(exc)
        return run_end.end(Status.CRASHED, 1, details.pop("message"), **details)


def run(spec: RunSpec, program: Optional[Program], call: Optional[Callable[[], Any]] = None) -> int:
    """Run the program under the tracer and write the end record; returns the exit status.
    ``call``: run this function instead (a rank's function in a ``torch.multiprocessing``
    child, :mod:`audit.probes.script.spawn`); ``program`` is then None."""
    from audit.probes.script import ranks as script_ranks
    from audit.probes.script.draws import DrawWatch
    from audit.probes.script.tracer import ScriptTracer
    from audit.probes.run.trace import TraceWriter

    from audit.probes.run.knobs import describe_run as environment

    writer = TraceWriter(spec.trace)
    lockstep = tracer = attached = None
    run_end = _Run(spec, writer, None)
    real_exit = os._exit
    try:
        _start_observing(spec)
        lockstep = _lockstep(spec)
        tracer = ScriptTracer(writer, spec.steps, detail=spec.detail,
                              lockstep=lockstep, environment=environment,
                              escape_log=spec.escape_log,
                              draws=DrawWatch(spec.escape_log))
        run_end.tracer = tracer
        if spec.cuda_ops:
            from audit.probes.determinism.script_ops import StepScan

            tracer.scan = StepScan(writer)
        attached = script_ranks.attach(spec, writer, tracer, RUNNER)  # ranks, or spawned ones
        os._exit = _exit_hook(run_end, tracer, lockstep, real_exit)
        if spec.stdin == "terminal":
            sys.stdin = _TerminalStdin()
        tracer.install()
        return _run_script(program, tracer, run_end, call)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # the audit's own set-up failed before the script ran
        details = _crash(exc)
        return run_end.end("crashed_setup", 1, f"the audit could not start the script: {details.pop('message')}",
                           **details)
    finally:
        os._exit = real_exit
        if tracer is not None:
            tracer.uninstall()
            tracer.shutdown_loaders()
        if not run_end.written:
            run_end.end("crashed_setup", 1, "the run ended without a report")
        if attached is not None:
            attached.close()
        if lockstep is not None:
            lockstep.finish()
        writer.close()


def main(argv: Optional[list[str]] = None) -> int:
    from audit.probes.run import program as script_runner

    argv = list(sys.argv[1:] if argv is None else argv)
    from audit.probes.run.processes import answer_stack_requests

    answer_stack_requests()
    if not argv:
        print("usage: python -m audit.probes.child.bootstrap SPEC.json -- (FILE | -m MODULE) [args...]",
              file=sys.stderr)
        return 2
    spec_path, rest = argv[0], argv[1:]
    if rest[:1] == ["--"]:
        rest = rest[1:]
    spec = read_spec(RunSpec, spec_path)
    program = script_runner.parse(rest, interpreter=False)
    if spec.device == "cpu":  # before torch is imported: the script sees no GPU
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    code = run(spec, program)
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
