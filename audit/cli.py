"""The command line: one command per audit kind (:mod:`audit.registry`) and ``audit check``.

``main(argv) -> int`` is the only place that turns exceptions into exit statuses: bad input is
one line saying what is wrong and what to do, exit 2 (the traceback only under ``--debug``);
0 means the audit passed, 1 that it found a problem.
"""
from __future__ import annotations

import argparse
import re
import sys
from typing import Any, Optional

from audit import __version__, registry
from audit.config import parse_shape
from audit.interrupts import exit_status, signals_raise
from audit.kinds.base import positive_arg
from audit.probes.errors import ExitCode, UsageError
from audit.probes.run.processes import Interrupted


_SIZES = re.compile(r"\d+(?:[,x]\d+)*")


def _int_list(text: str) -> list[Any]:
    if not _SIZES.fullmatch("".join(text.split())):
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of sizes like 3,32,32")
    shape = parse_shape(text)
    if shape is None:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive sizes like 3,32,32")
    return shape


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"{text!r}: give a seed from 0 to 4294967295")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive number of seconds")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, as for every other bad input
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _gate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, help="report folder (default audit-report)")
    p.add_argument("--junit-xml", default=None, metavar="PATH", help="also write JUnit XML here")
    p.add_argument("--baseline", default=None, metavar="FILE",
                   help="fail only on regressions against this baseline")
    p.add_argument("--update-baseline", action="store_true", help="rewrite the baseline file")
    p.add_argument("--exit-zero", action="store_true", help="exit 0 even when the audit fails")
    p.add_argument("--config", default=None, metavar="PYPROJECT",
                   help="read [tool.audit] from this file instead of the nearest pyproject.toml")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--quiet", "-q", action="store_true", help="print only the verdict line")
    p.add_argument("--timeout", type=_seconds, default=None, metavar="SECONDS",
                   help="end a run that makes no training step for this long (default 300)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", nargs="?", default=None,
                   help="path/to/file.py:NAME[,key=value...] or package.module:NAME "
                        "(default: the built-in example)")
    p.add_argument("--seed", type=_seed, default=None, help="seed for every run (default 0)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    p.add_argument("--input-shape", type=_int_list, default=None,
                   help="per-sample input shape for a bare module, e.g. 3,224,224")
    p.add_argument("--num-classes", type=positive_arg, default=None,
                   help="classes of the synthetic targets for a bare module")
    p.add_argument("--executor", choices=["local", "ray"], default=None,
                   help="where fresh runs execute: this machine's processes (local, the "
                        "default) or Ray tasks (ray; pip install 'audit[ray]')")
    p.add_argument("--ray-address", default=None, metavar="ADDRESS",
                   help="with --executor ray: the cluster to join (auto, ray://HOST:PORT); "
                        "default: Ray started on this machine")
    _gate_options(p)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="audit", description="Determinism and initialization audits for "
                                               "PyTorch training code.")
    parser.add_argument("--version", action="version", version=f"audit {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    for kind in registry.KINDS:
        p = sub.add_parser(kind.name, help=kind.help)
        _common(p)
        kind.add_arguments(p)
    _gate_options(sub.add_parser("check", help="run every audit [tool.audit] enables; the CI gate"))
    return parser


def _split_script(argv: list[str]) -> tuple[list[Any], Optional[list[Any]]]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, None


def _parse(argv: list[str], script: Optional[list[str]]) -> argparse.Namespace:
    parser = build_parser()
    if not argv:
        parser.print_help()
        raise UsageError("audit: name a command: " + ", ".join(registry.names()) + " or check")
    args = parser.parse_args(argv)
    if args.command is None:
        raise UsageError("audit: name a command: " + ", ".join(registry.names())
                         + " or check (see audit --help)")
    if script is not None:
        if args.command == "check" or not registry.get(args.command).script_mode:
            modes = ", ".join(f"'audit {k.name}'" for k in registry.KINDS if k.script_mode)
            raise UsageError(f"script mode ('-- python train.py ...') is for {modes} only")
        if not script:
            raise UsageError("nothing after '--': give the training command, e.g. -- python train.py")
        if args.target:
            raise UsageError("give either a TARGET or a script after '--', not both")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, script = _split_script(argv)
    with signals_raise():
        return _main(argv, script)


def _interrupted_line(exc: Interrupted) -> str:
    if exc.report:
        return f"audit: stopped by {exc.name}; every run was ended; partial report: {exc.report}"
    return f"audit: stopped by {exc.name}; every run was ended; no report was written"


def _main(argv: list[str], script: Optional[list[str]]) -> int:
    debug = "--debug" in argv
    from audit import commands

    try:
        args = _parse(argv, script)
        if args.command == "check":
            return int(commands.check(args))
        return int(commands.audit(registry.get(args.command), args, script))
    except UsageError as exc:
        print(str(exc), file=sys.stderr)
        return ExitCode.USAGE
    except Interrupted as exc:
        print(_interrupted_line(exc), file=sys.stderr)
        return exit_status(exc)
    except KeyboardInterrupt:
        print("audit: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except Exception as exc:  # a bug of ours, or the environment: still one line
        if debug:
            raise
        print(f"audit: internal error: {type(exc).__name__}: {exc} (run with --debug for the "
              "traceback)", file=sys.stderr)
        return ExitCode.USAGE


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
