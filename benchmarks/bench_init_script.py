"""What `audit init -- python train.py` costs: the whole audit against the sum of the plain
script runs it stands for (one per scheme, each of --steps steps), side by side, medians.

    PYTHONPATH=. python benchmarks/bench_init_script.py [--rounds 3] [--steps 5]
        [--schemes default,kaiming_normal,xavier_normal,orthogonal,lsuv]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "init_script_train.py")


def timed(argv: list) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, cwd=HERE)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--schemes", default="default,kaiming_normal,xavier_normal,orthogonal,lsuv")
    args = parser.parse_args()
    schemes = args.schemes.split(",")
    plain, audited = [], []
    for _ in range(args.rounds):
        plain.append(sum(timed([sys.executable, SCRIPT, "--steps", str(args.steps)])
                         for _ in schemes))
        with tempfile.TemporaryDirectory() as out:
            audited.append(timed([sys.executable, "-m", "audit", "init", "-q", "--steps",
                                  str(args.steps), "--schemes", args.schemes, "--out", out,
                                  "--exit-zero", "--", "python", SCRIPT,
                                  "--steps", str(args.steps)]))
    p, a = statistics.median(plain), statistics.median(audited)
    print(f"{len(schemes)} schemes x {args.steps} steps: plain runs {p:.1f} s, "
          f"audit init {a:.1f} s, ratio {a / p:.3f}")


if __name__ == "__main__":
    main()
