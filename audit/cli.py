"""The command line: ``audit determinism``, ``audit init``, ``audit check``.

``main(argv) -> int`` never raises for bad input: it prints one line saying what is wrong and
what to do, and returns 2 (with the traceback only under ``--debug``). Exit status 0 means the
audit passed, 1 that it found a problem.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Optional

from audit.interrupts import exit_status, signals_raise
from audit.probes.runs import Interrupted

EXIT_OK, EXIT_FOUND, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad input: reported as one line, exit status 2."""


_SHAPE = re.compile(r"\d+(?:[,x]\d+)*")


def _int_list(text: str) -> list:
    """``3,32,32`` or ``3x32x32``: positive sizes, nothing else."""
    compact = "".join(text.split())
    if not _SHAPE.fullmatch(compact):
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of sizes like 3,32,32")
    values = [int(v) for v in re.split("[,x]", compact)]
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give positive sizes like 3,32,32")
    return values


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"{text!r}: a seed is from 0 to 4294967295")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive number of seconds")
    return value


def _positive(text: str, minimum: int = 1, why: str = "") -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{text!r}: must be {minimum} or more{why}")
    return value


def _runs(text: str) -> int:
    return _positive(text, 2, ": a comparison needs two runs")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, as for every other bad input
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="audit", description="Determinism and initialization audits for PyTorch training code.")
    parser.add_argument("--version", action="version", version="audit 0.1.0")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    def common(p, steps_help):
        p.add_argument("target", nargs="?", default=None,
                       help="path/to/file.py:NAME or package.module:NAME (default: the built-in example)")
        p.add_argument("--steps", type=_positive, default=None, help=steps_help)
        p.add_argument("--seed", type=_seed, default=None, help="seed for every run (default 0)")
        p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
        p.add_argument("--out", default=None, help="report folder (default audit-report)")
        p.add_argument("--input-shape", type=_int_list, default=None,
                       help="per-sample input shape for a bare module, e.g. 3,224,224")
        p.add_argument("--num-classes", type=_positive, default=None,
                       help="classes of the synthetic targets for a bare module")
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

    det = sub.add_parser("determinism", help="do runs under matched seeds agree bit for bit?")
    common(det, "training steps per run (default 20)")
    det.add_argument("--runs", type=_runs, default=None, help="fresh processes to compare (default 2)")
    det.add_argument("--jobs", type=_positive, default=None, help="runs at once (default 1)")
    det.add_argument("--no-attribution", action="store_true", help="skip the knob reruns")

    ini = sub.add_parser("init", help="per-layer health of the init schemes, and a recommendation")
    common(ini, "optimizer steps per scheme (default 5)")
    ini.add_argument("--schemes", default=None,
                     help="comma-separated: default,kaiming_normal,kaiming_uniform,xavier_normal,"
                          "xavier_uniform,orthogonal,lsuv,normal:STD (default: all but normal)")

    chk = sub.add_parser("check", help="run every audit [tool.audit] enables; the CI gate")
    chk.add_argument("--out", default=None)
    chk.add_argument("--junit-xml", default=None, metavar="PATH")
    chk.add_argument("--baseline", default=None, metavar="FILE")
    chk.add_argument("--update-baseline", action="store_true")
    chk.add_argument("--exit-zero", action="store_true")
    chk.add_argument("--config", default=None, metavar="PYPROJECT")
    chk.add_argument("--debug", action="store_true")
    chk.add_argument("--quiet", "-q", action="store_true")
    chk.add_argument("--timeout", type=_seconds, default=None, metavar="SECONDS")
    return parser


def _split_script(argv: list) -> tuple[list, Optional[list]]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, None


def main(argv: Optional[list] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, script = _split_script(argv)
    with signals_raise():
        return _main(argv, script)


def _main(argv: list, script: Optional[list]) -> int:
    debug = "--debug" in argv
    try:
        parser = build_parser()
        if not argv:
            parser.print_help()
            return EXIT_USAGE
        args = parser.parse_args(argv)
        if args.command is None:
            raise UsageError("audit: name a command: determinism, init or check (see audit --help)")
        if script is not None:
            if args.command != "determinism":
                raise UsageError("script mode ('-- python train.py ...') is for 'audit determinism' only")
            if not script:
                raise UsageError("nothing after '--': give the training command, e.g. -- python train.py")
            if args.target:
                raise UsageError("give either a TARGET or a script after '--', not both")
        from audit import commands

        if args.command == "determinism":
            return commands.determinism(args, script)
        if args.command == "init":
            return commands.init(args)
        return commands.check(args)
    except UsageError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    except Interrupted as exc:
        print(_interrupted_line(exc), file=sys.stderr)
        return exit_status(exc)
    except KeyboardInterrupt:
        print("audit: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug of ours, or the environment: still one line
        if debug:
            raise
        print(f"audit: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_USAGE


def _interrupted_line(exc: Interrupted) -> str:
    if exc.report:
        return f"audit: stopped by {exc.name}; every run was ended; partial report: {exc.report}"
    return f"audit: stopped by {exc.name}; every run was ended; no report was written"


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":  # run the imported module, so its exception classes are the ones raised
    from audit.cli import entry as _entry

    _entry()
