"""What ``audit variance`` with N seeds costs, against launching the same number of plain
training runs by hand (each a fresh process that seeds, builds the target and trains).

``audit variance`` with N seeds trains 5 x N runs (four sources and all together), so the plain
side launches 5 x N runs too, ``--jobs`` at a time on both sides. Medians of ``--rounds``,
the two sides interleaved in each round. Besides wall time it reports the CPU time of the
child processes (user + system), which a shared, loaded machine disturbs far less.

    PYTHONPATH=. python benchmarks/bench_variance.py [--rounds 3] [--seeds 2] [--steps 10] [--jobs 1]
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PLAIN = """
import random, sys
import numpy as np, torch
from audit.probes.run.target import load_target
from audit.probes.run.training import compute_loss, cycle_batches
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


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measured(fn, *args) -> tuple:
    """``(wall seconds, child CPU seconds)`` of ``fn(*args)``."""
    wall, cpu = time.perf_counter(), _child_cpu()
    fn(*args)
    return time.perf_counter() - wall, _child_cpu() - cpu


def plain(runs: int, steps: int, jobs: int) -> None:
    from audit.probes.variance.runner import child_environment

    env = dict(child_environment(jobs), PYTHONPATH=ROOT)
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


def audit(seeds: int, steps: int, jobs: int) -> None:
    from audit.probes.variance.engine import VarianceOptions, audit_variance

    result = audit_variance(VarianceOptions(seeds=seeds, steps=steps, jobs=jobs))
    assert result.error is None and not result.crashed, result.error


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--jobs", type=int, default=1)
    args = ap.parse_args()
    runs = 5 * args.seeds
    p, a = [], []
    for i in range(args.rounds):
        p.append(measured(plain, runs, args.steps, args.jobs))
        a.append(measured(audit, args.seeds, args.steps, args.jobs))
        print(f"round {i + 1}: plain {p[-1][0]:.1f} s wall {p[-1][1]:.1f} s CPU, "
              f"audit {a[-1][0]:.1f} s wall {a[-1][1]:.1f} s CPU", flush=True)
    print(f"built-in example, audit variance --seeds {args.seeds} ({runs} runs) x {args.steps} "
          f"steps, --jobs {args.jobs}, vs {runs} plain fresh-process runs; medians of {args.rounds}")
    print(f"{'':>5} {'plain runs s':>13} {'audit s':>9} {'ratio':>7}")
    for k, what in enumerate(("wall", "CPU")):
        mp, ma = statistics.median(x[k] for x in p), statistics.median(x[k] for x in a)
        print(f"{what:>5} {mp:>13.1f} {ma:>9.1f} {ma / mp:>7.3f}")


if __name__ == "__main__":
    main()
