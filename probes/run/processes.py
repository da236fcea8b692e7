"""Fresh runs: start one in its own process group, watch its trace grow, end it and its children.

A :class:`Run` is one process (a worker, a script under the bootstrap) started in a new session,
so that ending it ends every process it made (DataLoader workers included). Its progress is
read from its trace file as it grows (a record when it starts loading the target, then one
per training step). A run whose trace does not grow for ``limit`` seconds is *stalled*:
:meth:`Run.stack` asks it for the stacks of its threads (:func:`answer_stack_requests`,
``faulthandler`` on ``SIGUSR1``) before it is ended.

:class:`Watchdog` is the same limit for work done in this process (the init audit): it raises
:class:`Stalled` in the main thread when nothing kicks it for ``limit`` seconds.

:class:`Interrupted` is what a SIGINT or SIGTERM becomes (the CLI raises it from its signal
handler); an engine that catches it on the way up attaches what it measured as ``partial``.
Light: no torch.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import re
import signal
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any, Callable, Optional, Union

from audit.probes.results.records import Record

#: The program a fresh child starts with (``python -c _LAUNCH MODULE ARGS...``): it runs MODULE
#: as ``python -m MODULE`` would, but first takes away the working folder that ``-c`` (and
#: ``-m``) put first on ``sys.path``. That folder is the user's: a folder or package there named
#: ``audit`` (a project's own, or a clone of this tool) would otherwise be imported in place of
#: the installed tool. The child puts back what a plain ``python train.py`` would have (the
#: script's folder, or the working folder for a target) once the tool is imported.
_LAUNCH = ("import os, runpy, sys\n"
          "if (not getattr(sys.flags, 'safe_path', False)\n"
          "        and sys.path[:1] in ([''], [os.getcwd()])):\n"
          "    del sys.path[0]\n"
          "sys.argv = sys.argv[1:]\n"
          "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n")


def child_argv(module: str, *args: str, options: tuple[str, ...] = ()) -> list[str]:
    """The argv of a fresh child running the tool's ``module`` (``audit.probes.child.worker``, ...)
    with ``args``, under this interpreter and its ``options`` (``-X ...``, ``-W ...``), importing
    the tool from where it is installed whatever the working folder holds (:data:`_LAUNCH`)."""
    return [sys.executable, *options, "-c", _LAUNCH, module, *args]

def last_words(output: str, lines: int = 3, width: int = 400) -> str:
    """``"; its last output: ..."`` with the last ``lines`` non-blank lines a child wrote
    (a traceback's last lines name the error), or ``""`` when it wrote nothing."""
    said = [line.strip() for line in output.splitlines() if line.strip()][-lines:]
    if not said:
        return ""
    text = " | ".join(said)
    return "; its last output: " + (text if len(text) <= width else "..." + text[-width:])


#: Seconds a run may go without a training step, unless told otherwise (``--timeout``).
DEFAULT_TIMEOUT = 300.0
#: Seconds a run may take to write its first record (the audit's own imports, torch's):
#: the limit counts from there, unless it is longer.
STARTUP = 120.0
#: Seconds given to a stalled run to print its stacks before it is ended.
STACK_WAIT = 2.0
#: Seconds a run is given to exit cleanly on SIGTERM before it is killed.
GRACE = 10.0
#: How a step record's line starts in a trace (the writer's compact JSON).
STEP_PREFIX = b'{"type":"%s"' % Record.STEP.encode()
_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<func>\S+)')


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived. ``partial``: the result of what was measured before it (an
    engine sets it on the way up); ``report``: where the face wrote it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.partial: Any = None  # a result of any audit (run/ knows none of them)
        self.report: Optional[str] = None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


class Stalled(BaseException):
    """No progress for ``limit`` seconds in this process (see :class:`Watchdog`)."""

    def __init__(self, phase: str, limit: float, where: Optional[str]):
        at = f" (at {where})" if where else ""
        super().__init__(f"no progress for {limit:g} s while {phase}{at}")
        self.phase, self.limit, self.where = phase, limit, where


@dataclass
class Frame:
    """One frame of a stack (lists of them go innermost first)."""

    file: str
    line: int
    function: str

    @property
    def where(self) -> str:
        return place(self.file, self.line)


#: Notebook cells where this process runs a notebook's code: the code file name a cell's code
#: carries (``/tmp/ipykernel_1/123.py``) -> the cell's execution count (``In [3]``). Filled by
#: :func:`name_cells` (a shipped target, :mod:`audit.probes.run.shipped`, brings its own).
CELLS: dict[str, int] = {}


def name_cells(cells: dict[str, int]) -> None:
    """Name these code files as the notebook names its cells (see :data:`CELLS`)."""
    CELLS.update(cells)


def place(path: str, line: int) -> str:
    """Where a line of code is, as reports name it: ``file.py:12`` (relative to the working
    folder when it lies under it), or ``cell 3, line 2`` for a notebook cell's code."""
    cell = CELLS.get(path)
    if cell is not None:
        return f"cell {cell}, line {line}"
    return f"{short_path(path if path.startswith('<') else os.path.abspath(path))}:{line}"


def short_path(path: str) -> str:
    """A path relative to the working folder when it lies under it."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


@functools.lru_cache(maxsize=1)
def library_dirs() -> tuple[str, ...]:
    """The folders whose code is not the user's: the audit's own, the standard library's,
    those of the libraries the audit wraps (torch, NumPy), wherever they are installed (found
    without importing them), and every folder installed packages live in (site-packages and
    dist-packages, the user's site too), wherever the interpreter keeps them."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run/ probes/ root
    dirs = [os.path.join(root, name) + os.sep for name in ("probes", "audit", "reports")]
    for name in ("numpy", "torch"):
        found = importlib.util.find_spec(name)
        if found is not None and found.origin:
            dirs.append(os.path.dirname(os.path.abspath(found.origin)) + os.sep)
    paths = sysconfig.get_paths()
    installed = [paths.get(key) for key in ("stdlib", "platstdlib", "purelib", "platlib")]
    installed += [p for p in sys.path if os.path.basename(p.rstrip(os.sep)) in _SITE_FOLDERS]
    dirs += [os.path.abspath(p) + os.sep for p in installed if p]
    return tuple(dict.fromkeys(dirs))


#: The names of the folders installed packages live in.
_SITE_FOLDERS = ("site-packages", "dist-packages")


def is_user_file(path: str) -> bool:
    """Not the audit's own code, the standard library or an installed package."""
    if path in CELLS:
        return True
    full = os.path.abspath(path)
    return not (path.startswith("<") or full.startswith(library_dirs())
                or any(name in full for name in _SITE_FOLDERS))


def user_frame(frames: list[Frame]) -> Optional[Frame]:
    """The innermost frame in the user's code (``frames`` innermost first)."""
    return next((f for f in frames if is_user_file(f.file)), None)


def parse_stack(text: str) -> list[Frame]:
    """The main thread's frames, innermost first, from a :mod:`faulthandler` dump (the main
    thread is the last one it lists)."""
    blocks = re.split(r"^(?:Current thread|Thread) 0x[0-9a-f]+.*\(most recent call first\):$",
                      text, flags=re.MULTILINE)
    if len(blocks) < 2:
        return []
    return [Frame(m["file"], int(m["line"]), m["func"]) for m in _FRAME.finditer(blocks[-1])]


def answer_stack_requests() -> None:
    """In a run's process: print every thread's stack to stderr on ``SIGUSR1`` (what
    :meth:`Run.stack` asks for before it ends a stalled run), and exit cleanly on ``SIGTERM``
    (``finally`` blocks and ``atexit`` run: DataLoader workers are joined, multiprocessing's
    temporary folders removed) before :meth:`Run.end` kills what is left."""
    import faulthandler

    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    signal.signal(signal.SIGTERM, _exit_on_term)


def _exit_on_term(signum: int, frame: Optional[FrameType]) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def end_group(pgid: int, how: int = signal.SIGKILL) -> None:
    """Send ``how`` to every process of a process group (nothing if it is gone)."""
    try:
        os.killpg(pgid, how)
    except (ProcessLookupError, PermissionError):
        pass


class Run:
    """One fresh process, in its own process group, writing a trace that grows by one ``step``
    record per training step; its output (stdout and stderr) goes to ``log_path``."""

    def __init__(self, argv: list[str], log_path: str, trace_path: Optional[str], env: dict[str, str],
                 cwd: Optional[str] = None, stdin_path: Optional[str] = None):
        self.log_path, self.trace_path = log_path, trace_path
        self.steps = 0
        self._offset, self._rest = 0, b""
        self._log = open(log_path, "wb")
        stdin = open(stdin_path, "rb") if stdin_path else None  # the run's input, else none
        try:
            self.proc = subprocess.Popen(argv, env=env, cwd=cwd,
                                         stdin=stdin or subprocess.DEVNULL,
                                         stdout=self._log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        except BaseException:
            self._log.close()
            raise
        finally:
            if stdin is not None:
                stdin.close()
        self.started = self.last_progress = time.monotonic()

    def read_steps(self) -> int:
        """Steps the trace holds now (read incrementally); any new record is progress (the
        worker writes one when it starts loading the target, then one per step; a run with
        no trace makes none)."""
        if not self.trace_path:
            return self.steps
        try:
            with open(self.trace_path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return self.steps
        if data:
            self._offset += len(data)
            lines = (self._rest + data).split(b"\n")
            self._rest = lines.pop()
            self.steps += sum(1 for line in lines if line.startswith(STEP_PREFIX))
            if lines:
                self.last_progress = time.monotonic()
        return self.steps

    def poll(self) -> Optional[int]:
        return self.proc.poll()

    def stalled(self, limit: Optional[float]) -> bool:
        """No new record for ``limit`` seconds (``STARTUP`` at least before the first one)."""
        if not limit:
            return False
        if not self._offset:
            limit = max(limit, STARTUP)
        return time.monotonic() - self.last_progress > limit

    def stack(self, wait: float = STACK_WAIT) -> str:
        """The stacks the process prints on ``SIGUSR1`` (empty if it prints none in ``wait``)."""
        start = os.path.getsize(self.log_path)
        try:
            os.kill(self.proc.pid, signal.SIGUSR1)
        except ProcessLookupError:
            return ""
        deadline = time.monotonic() + wait
        text, size = "", start
        while time.monotonic() < deadline and self.proc.poll() is None:
            time.sleep(0.1)
            now = os.path.getsize(self.log_path)
            if now == size and "most recent call first" in text:
                break  # the dump has stopped growing
            size = now
            with open(self.log_path, "rb") as fh:
                fh.seek(start)
                text = fh.read().decode("utf-8", "replace")
        return text

    def end_when_done(self) -> int:
        """The exit status of a process that has ended; what it left of its group is killed."""
        code = self.proc.wait()
        end_group(self.proc.pid)
        self.close()
        return code

    def end(self, grace: float = GRACE) -> int:
        """End the process and every process of its group (see :func:`end_runs`); returns its
        exit status."""
        end_runs([self], grace)
        return self.proc.returncode

    def close(self) -> None:
        if not self._log.closed:
            self._log.close()

    def output_tail(self, size: int = 4000) -> str:
        with open(self.log_path, "rb") as fh:
            fh.seek(max(os.path.getsize(self.log_path) - size, 0))
            return fh.read().decode("utf-8", "replace")


def end_runs(runs: list[Any], grace: float = GRACE) -> None:
    """End runs and every process of their groups: ``SIGTERM`` to each run's process (it exits
    cleanly and ends its own children: DataLoader workers remove their temporary folders),
    then ``SIGKILL`` to whatever is left of the groups after ``grace`` seconds. A run made of
    several processes (``runs``: the ranks of a distributed run) is ended rank by rank."""
    runs = [r for run in runs for r in getattr(run, "runs", [run])]
    for run in runs:
        try:
            run.proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    for run in runs:
        try:
            run.proc.wait(timeout=max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            end_group(run.proc.pid)
            run.proc.wait()
        end_group(run.proc.pid)  # what is left of its group
        run.close()


class Watchdog:
    """Raises :class:`Stalled` in the main thread when :meth:`kick` is not called for ``limit``
    seconds (a ``SIGALRM`` timer). Outside the main thread, or without a limit, it only keeps
    the phase."""

    def __init__(self, limit: Optional[float], phase: str = "starting"):
        self.limit, self.phase = limit, phase
        self._old: Union[Callable[[int, Optional[FrameType]], Any], int, None] = None
        self._armed = False

    def __enter__(self) -> "Watchdog":
        import threading

        if self.limit and threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGALRM, self._fire)
            self._armed = True
            self.kick(self.phase)
        return self

    def kick(self, phase: Optional[str] = None) -> None:
        if phase:
            self.phase = phase
        if self._armed:
            signal.setitimer(signal.ITIMER_REAL, self.limit or 0)

    def __exit__(self, *exc: object) -> None:
        if self._armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._old)
            self._armed = False

    def _fire(self, signum: int, frame: Optional[FrameType]) -> None:
        frames = []
        while frame is not None:
            frames.append(Frame(frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name))
            frame = frame.f_back
        found = user_frame(frames)
        raise Stalled(self.phase, self.limit or 0, found.where if found else None)
