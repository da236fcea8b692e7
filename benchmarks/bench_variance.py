"""What ``audit variance`` with N seeds costs, against launching the same number of plain
training runs by hand (each a fresh process that seeds, builds the target and trains).

``audit variance`` with N seeds trains 5 x N runs (four sources and all together), so the plain
side launches 5 x N runs too, ``--jobs`` at a time on both sides. Medians of ``--rounds``,
the two sides interleaved in each round.

    PYTHONPATH=. python benchmarks/bench_variance.py [--rounds 3] [--seeds 2] [--steps 10] [--jobs 1]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PLAIN = """
import random, sys
import numpy as np, torch
from audit.probes.target import load_target
from audit.probes.training import compute_loss, cycle_batches
steps, seed = int(sys.argv[1]), int(sys.argv[2])
random.seed(seed); np.random.seed(seed); torch.manual_seed(seed)
setup = load_target(None)
model = setup.model; model.train()
opt = setup.optimizer(model.parameters())
losses = []
for _, batch in cycle_batches(setup.data, steps):
    opt.zero_grad(set_to_none=True)
    loss = compute_loss(setup, batch)
    loss.backward()
    opt.step()
    losses.append(loss.item())
print(sum(losses[-max(1, steps // 4):]) / max(1, steps // 4))
"""


def plain(runs: int, steps: int, jobs: int) -> float:
    from audit.probes.variance.runner import child_environment

    env = dict(child_environment(jobs), PYTHONPATH=ROOT)
    start = time.perf_counter()
    pending, running = list(range(runs)), []
    while pending or running:
        while pending and len(running) < jobs:
            seed = pending.pop(0)
            running.append(subprocess.Popen([sys.executable, "-c", PLAIN, str(steps), str(seed)],
                                            env=env, stdout=subprocess.DEVNULL))
        for proc in list(running):
            if proc.poll() is not None:
                assert proc.returncode == 0
                running.remove(proc)
        time.sleep(0.01)
    return time.perf_counter() - start


def audit(seeds: int, steps: int, jobs: int) -> float:
    from audit.probes.variance.engine import VarianceOptions, audit_variance

    start = time.perf_counter()
    result = audit_variance(VarianceOptions(seeds=seeds, steps=steps, jobs=jobs))
    assert result.error is None and not result.crashed, result.error
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--jobs", type=int, default=1)
    args = ap.parse_args()
    runs = 5 * args.seeds
    p, a = [], []
    for _ in range(args.rounds):
        p.append(plain(runs, args.steps, args.jobs))
        a.append(audit(args.seeds, args.steps, args.jobs))
    mp, ma = statistics.median(p), statistics.median(a)
    print(f"built-in example, audit variance --seeds {args.seeds} ({runs} runs) x {args.steps} "
          f"steps, --jobs {args.jobs}, vs {runs} plain fresh-process runs; medians of {args.rounds}")
    print(f"{'plain runs s':>13} {'audit s':>9} {'ratio':>7}")
    print(f"{mp:>13.1f} {ma:>9.1f} {ma / mp:>7.3f}")


if __name__ == "__main__":
    main()
