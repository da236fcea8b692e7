"""Script mode under a launcher: ``torchrun [options] train.py [args]`` and
``python -m torch.distributed.run [options] train.py [args]``.

:func:`parse` reads such a command into a :class:`Launch`: how many ranks each run has, and the
plain ``python`` command every rank runs (the audit starts the ranks itself, as torchrun
would). Single-node options are understood; an option the audit cannot honour is one line
(:class:`~audit.probes.errors.UsageError`) before any run. Light: no torch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Union

from audit.probes.errors import UsageError

if TYPE_CHECKING:
    from audit.probes.run.program import Program

#: Options with a value the audit accepts and ignores: it starts the ranks of one node itself,
#: on the loopback interface, with a free port per run (no rendezvous, no restarts).
_IGNORED = {"master_port", "rdzv_backend", "rdzv_endpoint", "rdzv_id", "rdzv_conf",
            "monitor_interval", "start_method", "role"}
#: Options that would change what the audit measures or where the ranks' output goes.
_REFUSED = {
    "no_python": "the audit runs every rank's script under its Python bootstrap",
    "log_dir": "each rank's output goes to the audit's own log (see --debug)",
    "redirects": "each rank's output goes to the audit's own log (see --debug)",
    "tee": "each rank's output goes to the audit's own log (see --debug)",
    "local_ranks_filter": "each rank's output goes to the audit's own log (see --debug)",
    "local_addr": "the ranks run on this machine's loopback interface",
    "logs_specs": "each rank's output goes to the audit's own log (see --debug)",
}
_FLAGS = {"standalone", "module", "run_path", "no_python"}
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}
_MODULES = {"torch.distributed.run": True, "torch.distributed.launch": False}


@dataclass
class Launch:
    """A launcher command read: ranks per run and the ``python`` command each rank runs."""

    nproc: int
    python: list[str] = field(default_factory=list)  # ["python", (FILE | -m MODULE), args...]
    launcher: str = "torchrun"


def _launcher_module(words: list[str]) -> Optional[str]:
    """``torch.distributed.run`` (or ``.launch``) when ``words`` is ``python [opts] -m`` it."""
    from audit.probes.run import program as script_runner

    try:
        program = script_runner.parse(words)
    except UsageError:
        return None
    return program.module if program.module in _MODULES else None


def is_launch(words: list[str]) -> bool:
    """Is this command a launcher (``torchrun``, ``python -m torch.distributed.run``)?"""
    if not words:
        return False
    if os.path.basename(words[0]) == "torchrun":
        return True
    return _launcher_module(words) is not None


def parse(words: list[str]) -> Launch:
    """Read a launcher command; raises :class:`UsageError` (one line) for what the audit cannot
    run: several nodes, restarts, output redirection, a missing script."""
    from audit.probes.run import program as script_runner

    if os.path.basename(words[0]) == "torchrun":
        interpreter, rest, launcher = [], list(words[1:]), "torchrun"
    else:
        program = script_runner.parse(words)
        assert program.module is not None  # callers check is_launch: -m one of _MODULES
        if not _MODULES[program.module]:
            raise UsageError("python -m torch.distributed.launch is deprecated: write "
                             "'-- torchrun --nproc_per_node N train.py' (the script reads LOCAL_RANK "
                             "from the environment)")
        interpreter, rest = program.options, list(program.args)
        launcher = "python -m torch.distributed.run"
    values, script = _options(rest, launcher)
    nproc = _nproc(values, launcher)
    head = ["-m", script[0]] if "module" in values else [script[0]]
    return Launch(nproc, ["python", *interpreter, *head, *script[1:]], launcher)


def _options(words: list[str], launcher: str) -> tuple[dict[str, Union[str, bool]], list[str]]:
    """(option -> value, [script, args...]) of the launcher's own options."""
    values: dict[str, Union[str, bool]] = {}
    while words:
        word = words.pop(0)
        if word == "--":
            break
        if not word.startswith("-") or word == "-":
            words.insert(0, word)
            break
        name, eq, value = word.lstrip("-").partition("=")
        name = {"m": "module", "r": "redirects", "t": "tee"}.get(name, name).replace("-", "_")
        if name in _REFUSED:
            raise UsageError(f"{launcher} option {word.split('=')[0]} is not supported: {_REFUSED[name]}")
        if name in _FLAGS:
            values[name] = True
            continue
        if name not in _IGNORED | {"nproc_per_node", "nnodes", "node_rank", "master_addr",
                                   "max_restarts"}:
            raise UsageError(f"{launcher} option {word.split('=')[0]} is not supported; the audit "
                             "understands --nproc-per-node, --nnodes 1, --standalone, -m, and the "
                             "single-node rendezvous options (ignored: it picks a free port per run)")
        if not eq:
            if not words:
                raise UsageError(f"{launcher} option {word} needs a value")
            value = words.pop(0)
        values[name] = value
    if not words:
        raise UsageError(f"no training script after {launcher}: write '-- {launcher} "
                         "--nproc_per_node 2 train.py [args]'")
    return values, words


def _nproc(values: dict[str, Union[str, bool]], launcher: str) -> int:
    nnodes = str(values.get("nnodes", "1"))
    if nnodes not in ("1", "1:1"):
        raise UsageError(f"{launcher} --nnodes {nnodes}: the audit runs the ranks of one node; "
                         "give --nnodes 1")
    if str(values.get("node_rank", "0")) != "0":
        raise UsageError(f"{launcher} --node-rank must be 0: the audit runs the ranks of one node")
    if str(values.get("master_addr", "127.0.0.1")) not in _LOOPBACK:
        raise UsageError(f"{launcher} --master-addr {values['master_addr']}: the ranks run on this "
                         "machine; leave it out (the audit uses 127.0.0.1)")
    if str(values.get("max_restarts", "0")) != "0":
        raise UsageError(f"{launcher} --max-restarts must be 0: a restarted rank would retrain "
                         "from the start inside a compared run")
    text = str(values.get("nproc_per_node", "1"))
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"{launcher} --nproc-per-node {text}: give the number of ranks, e.g. "
                         "--nproc-per-node 2")
    return int(text)


def validate(script: list[str], cwd: Optional[str] = None, launchers: bool = True) -> Program:
    """:func:`audit.probes.run.program.validate`, launcher commands included (``launchers``:
    the audit runs them; else they are refused with one line)."""
    from audit.probes.run import program as script_runner

    if is_launch(script):
        if not launchers:
            raise UsageError(f"'-- {script[0]} ...': only `audit determinism` runs a launcher "
                             "command; give the plain '-- python train.py [args]'")
        return script_runner.validate(parse(script).python, cwd)
    return script_runner.validate(script, cwd)


def python_command(script: list[str], nproc: int) -> tuple[int, list[str]]:
    """``(ranks per run, the python command each rank runs)`` of a script command and the
    ``--nproc`` asked for (1 when not asked); a launcher's rank count and a different
    ``--nproc`` are refused."""
    if not is_launch(script):
        return nproc, list(script)
    launch = parse(script)
    if nproc > 1 and nproc != launch.nproc:
        raise UsageError(f"--nproc {nproc} and {launch.launcher} --nproc-per-node {launch.nproc} "
                         "disagree: give one of them")
    return launch.nproc, launch.python
