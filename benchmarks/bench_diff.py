"""What ``audit diff`` costs on identical sides, side by side with plain training in fresh
processes (the built-in example):

* ``diff --against FILE`` (one run) against one plain run;
* ``diff A B`` (two runs at once) against two plain runs at once.

Rounds interleave the four, medians are compared. The reference is recorded once before the
rounds (its size is printed too: the built-in example at 20 steps must stay under 1 MB).

    PYTHONPATH=. python benchmarks/bench_diff.py [--rounds 3] [--steps 20]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PLAIN = """
import random, sys
import numpy as np, torch
from audit.probes.run.target import load_target
from audit.probes.run.training import compute_loss, cycle_batches, make_scheduler, optimizer_step
steps = int(sys.argv[1])
random.seed(0); np.random.seed(0); torch.manual_seed(0)
setup = load_target(None, batches=steps)
model = setup.model; model.train()
opt = setup.optimizer(model.parameters())
sched = make_scheduler(setup, opt)
for _, batch in cycle_batches(setup.data, steps):
    opt.zero_grad(set_to_none=True)
    loss = compute_loss(setup, batch)
    loss.backward()
    optimizer_step(opt, sched)
"""


def plain(count: int, steps: int) -> float:
    """``count`` plain runs at once, each a fresh process; seconds until all finished."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", PLAIN, str(steps)], env=env) for _ in range(count)]
    for proc in procs:
        if proc.wait() != 0:
            raise SystemExit("a plain run failed")
    return time.perf_counter() - start


def against(ref, steps: int) -> float:
    from audit.probes.diff.engine import DiffOptions, diff_against

    start = time.perf_counter()
    result = diff_against(ref, DiffOptions())
    assert result.verdict == "identical", result.first_difference
    return time.perf_counter() - start


def pair(steps: int) -> float:
    from audit.probes.diff.engine import DiffOptions, diff

    start = time.perf_counter()
    result = diff(DiffOptions(steps=steps))
    assert result.verdict == "identical", result.first_difference
    return time.perf_counter() - start


def recorded(steps: int, folder: str):
    from audit.probes.diff import reference
    from audit.probes.diff.engine import DiffOptions, record

    result, ref = record(DiffOptions(steps=steps))
    assert ref is not None, result
    path = os.path.join(folder, "example.audit")
    size = reference.save(ref, path)
    return reference.load(path), size


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        ref, size = recorded(args.steps, folder)
    times: dict = {"plain1": [], "against": [], "plain2": [], "pair": []}
    for _ in range(args.rounds):
        times["plain1"].append(plain(1, args.steps))
        times["against"].append(against(ref, args.steps))
        times["plain2"].append(plain(2, args.steps))
        times["pair"].append(pair(args.steps))
    m = {k: statistics.median(v) for k, v in times.items()}
    print(f"built-in example, {args.steps} steps, medians of {args.rounds}; "
          f"reference file {size / 1024:.0f} KiB")
    print(f"{'comparison':<26} {'plain s':>8} {'diff s':>8} {'ratio':>7}")
    print(f"{'--against vs 1 plain run':<26} {m['plain1']:>8.1f} {m['against']:>8.1f} "
          f"{m['against'] / m['plain1']:>7.3f}")
    print(f"{'diff A B vs 2 plain runs':<26} {m['plain2']:>8.1f} {m['pair']:>8.1f} "
          f"{m['pair'] / m['plain2']:>7.3f}")


if __name__ == "__main__":
    main()
