"""Script mode's command line: ``audit determinism [options] -- python train.py [args...]``.

:func:`validate` checks the command after ``--`` before any run starts (a usage error is one
line, exit status 2); :func:`command` gives the argv that runs it under the bootstrap in a
fresh process::

    python [options] -c LAUNCH audit.probes.child.bootstrap SPEC.json -- train.py args...
    python [options] -c LAUNCH audit.probes.child.bootstrap SPEC.json -- -m package.module args...

(``LAUNCH``: :func:`audit.probes.run.processes.child_argv`, which imports the tool from where it is
installed, never from the working folder.)

The script runs under the interpreter that runs ``audit`` (the ``python`` word says "a Python
program"; it does not pick another interpreter). Interpreter options that do not hide the
audit's environment are passed on: ``-u -B -O -OO -b -bb -q -s -v -d -R -W ARG -X ARG``.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import re
import select
import sys
from dataclasses import dataclass, field
from typing import IO, Any, Optional

from audit.probes.errors import UsageError
from audit.probes.run.processes import child_argv
from audit.probes.run.spec import RunSpec

_PYTHON = re.compile(r"^python(\d+(\.\d+)*)?w?(\.exe)?$", re.IGNORECASE)
_MODULE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_FLAGS = "uBObqsvdR"  # interpreter flags without a value, passed on
_VALUED = "WX"  # interpreter options with a value, passed on
_REFUSED = {
    "E": "it ignores PYTHON* environment variables, which the audit's runs rely on",
    "I": "isolated mode ignores PYTHON* environment variables, which the audit's runs rely on",
    "P": "the audit puts the script's folder first on sys.path, as plain python does",
    "c": "script mode runs a file or a module: save the code to a file",
    "i": "an interactive prompt has no place in an unattended run",
    "x": "give the file without its first line",
    "h": "", "V": "", "?": "",
}
_EXAMPLE = "'-- python train.py [args]' or '-- python -m package.module [args]'"


@dataclass
class Program:
    """The Python program after ``--``: a file or a module, its arguments, interpreter options."""

    path: Optional[str] = None
    module: Optional[str] = None
    args: list[str] = field(default_factory=list)
    options: list[Any] = field(default_factory=list)  # interpreter options to pass on

    @property
    def target(self) -> str:
        """The file or the module (:func:`parse` sets one of them)."""
        target = self.path or self.module
        assert target is not None  # parse returns a program with a path or a module
        return target

    def argv(self) -> list[Any]:
        """What follows the bootstrap's ``--``: ``[path, *args]`` or ``["-m", module, *args]``."""
        head = ["-m", self.module] if self.module else [self.path]
        return [*head, *self.args]


def parse(argv: list[str], interpreter: bool = True) -> Program:
    """Read a ``python [options] (FILE | -m MODULE) [args]`` command. With ``interpreter``
    the first word must name a Python interpreter; without, the command starts after it."""
    words = list(argv)
    if interpreter:
        if not words:
            raise UsageError(f"nothing after '--': give the training command, {_EXAMPLE}")
        first = words.pop(0)
        if not _is_python(first):
            hint = f" (put python before {first})" if first.endswith(".py") else ""
            raise UsageError(f"script mode runs a Python program: write {_EXAMPLE}, "
                             f"not '-- {first} ...'{hint}")
    program = Program()
    while words:
        word = words.pop(0)
        if word == "--" or not word.startswith("-") or word == "-":
            if word == "--":
                if not words:
                    break
                word = words.pop(0)
            if word == "-":
                raise UsageError("script mode cannot read the program from stdin: give a file")
            program.path, program.args = word, words
            return program
        if word.startswith("--"):
            raise UsageError(f"python option {word} is not supported in script mode")
        i = 1
        while i < len(word):
            char = word[i]
            if char in _FLAGS:
                program.options.append(f"-{char}")
                i += 1
            elif char in _VALUED:
                value = word[i + 1:] or (words.pop(0) if words else None)
                if value is None:
                    raise UsageError(f"python option -{char} needs a value")
                program.options += [f"-{char}", value]
                break
            elif char == "m":
                module = word[i + 1:] or (words.pop(0) if words else None)
                if not module:
                    raise UsageError("python -m needs a module name, e.g. -- python -m package.train")
                if not _MODULE.match(module):
                    raise UsageError(f"{module!r} is not a module name like package.train")
                program.module, program.args = module, words
                return program
            else:
                why = _REFUSED.get(char)
                raise UsageError(f"python option -{char} is not supported in script mode"
                                 + (f": {why}" if why else ""))
    raise UsageError(f"no script after python: write {_EXAMPLE}")


def _is_python(word: str) -> bool:
    name = os.path.basename(word.replace("\\", "/"))
    if _PYTHON.match(name):
        return True
    try:
        return os.path.realpath(word) == os.path.realpath(sys.executable)
    except (OSError, ValueError):
        return False


def validate(script: list[str], cwd: Optional[str] = None) -> Program:
    """Check a script command before any run starts: raises :class:`UsageError` (one line)
    when it is not ``python FILE`` / ``python -m MODULE`` with a file or module that exists."""
    cwd = cwd or os.getcwd()
    program = parse(script)
    if program.path is not None:
        full = os.path.join(cwd, program.path)
        if os.path.isdir(full):
            if not os.path.isfile(os.path.join(full, "__main__.py")):
                raise UsageError(f"{program.path!r} is a folder without a __main__.py; give the script "
                                 "file, e.g. -- python train.py")
        elif not os.path.isfile(full):
            raise UsageError(f"script {program.path!r} not found (looked in {cwd})")
    else:
        assert program.module is not None  # parse returns a program with a path or a module
        problem = _module_problem(program.module, cwd)
        if problem:
            raise UsageError(problem)
    return program


def _module_problem(module: str, cwd: str) -> Optional[str]:
    """Why ``python -m MODULE`` would not find it (None if it would), without importing it."""
    parts = module.split(".")
    spec = importlib.machinery.PathFinder.find_spec(parts[0], [cwd])
    if spec is None:
        try:
            spec = importlib.util.find_spec(parts[0])  # a top-level name: nothing is run
        except (ImportError, ValueError):
            spec = None
    if spec is None:
        return f"no module named {parts[0]!r} (python -m looks in {cwd} and the installed packages)"
    for depth, part in enumerate(parts[1:], start=1):
        locations = spec.submodule_search_locations
        if locations is None:
            return f"{'.'.join(parts[:depth])!r} is a module, not a package: no module named {module!r}"
        spec = importlib.machinery.PathFinder.find_spec(part, list(locations))
        if spec is None:
            return f"no module named {'.'.join(parts[:depth + 1])!r}"
    if spec.submodule_search_locations is not None and \
            importlib.machinery.PathFinder.find_spec("__main__", list(spec.submodule_search_locations)) is None:
        return f"{module!r} is a package without a __main__ module; name the module to run"
    return None


#: The bytes every run reads as its standard input; ``None``: the tool's stdin is a terminal.
TERMINAL = None


#: How long an idle stdin (an open pipe nobody writes to) is waited for before it counts as empty.
STDIN_WAIT = 1.0


def read_stdin(stream: Optional[IO[Any]] = None) -> Optional[bytes]:
    """The tool's standard input, read once to its end so that every run gets the same bytes;
    ``None`` (:data:`TERMINAL`) when it is a terminal: nobody types into several runs at once.
    A closed or unreadable stdin, or a pipe with nothing to read within :data:`STDIN_WAIT`
    seconds, is empty."""
    source: IO[Any] = sys.stdin if stream is None else stream
    try:
        if source.isatty():
            return TERMINAL
        ready, _, _ = select.select([source.fileno()], [], [], STDIN_WAIT)
        if not ready:
            return b""
        buffer = getattr(source, "buffer", None)
        return buffer.read() if buffer is not None else source.read().encode()
    except (AttributeError, OSError, ValueError):
        return b""


def command(spec: RunSpec) -> list[Any]:
    """The argv that runs ``spec.script`` under the bootstrap in a fresh process."""
    assert spec.script is not None  # only script mode's runs are commanded here
    program = parse(spec.script)
    return child_argv("audit.probes.child.bootstrap", spec.spec_path, "--", *program.argv(),
                      options=tuple(program.options))
