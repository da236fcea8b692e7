"""What a full determinism audit of a deterministic target costs, against running its training
as many times plainly (each in a fresh process, as the audit's runs are).

    PYTHONPATH=. python benchmarks/bench_audit.py [--rounds 3] [--steps 20] [--runs 2]
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
from audit.probes.run.target import load_target
from audit.probes.run.training import compute_loss, cycle_batches
steps = int(sys.argv[1])
random.seed(0); np.random.seed(0); torch.manual_seed(0)
setup = load_target(None)
model = setup.model; model.train()
opt = setup.optimizer(model.parameters())
for _, batch in cycle_batches(setup.data, steps):
    opt.zero_grad(set_to_none=True)
    loss = compute_loss(setup, batch)
    loss.backward()
    opt.step()
"""


def plain(runs: int, steps: int) -> float:
    env = dict(os.environ, PYTHONPATH=ROOT)
    start = time.perf_counter()
    for _ in range(runs):
        subprocess.run([sys.executable, "-c", PLAIN, str(steps)], check=True, env=env)
    return time.perf_counter() - start


def audit(runs: int, steps: int) -> float:
    from audit.probes.run.launcher import RunOptions
    from audit.probes.determinism.orchestrate import audit_determinism

    start = time.perf_counter()
    result = audit_determinism(RunOptions(runs=runs, steps=steps))
    assert result.verdict == "deterministic", result.first_divergence
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    p, a = [], []
    for _ in range(args.rounds):
        p.append(plain(args.runs, args.steps))
        a.append(audit(args.runs, args.steps))
    mp, ma = statistics.median(p), statistics.median(a)
    print(f"built-in example, {args.runs} runs x {args.steps} steps, medians of {args.rounds}")
    print(f"{'plain runs s':>13} {'audit s':>9} {'ratio':>7}")
    print(f"{mp:>13.1f} {ma:>9.1f} {ma / mp:>7.3f}")


if __name__ == "__main__":
    main()
