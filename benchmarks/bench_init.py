"""What `audit init` costs: the init audit of resnet18 over all default schemes, against the
same number of plain forward/backward/step passes on the same batches (CPU, in one process).

    PYTHONPATH=. python benchmarks/bench_init.py [--rounds 3] [--steps 5] [--size 128] [--batch 8]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from audit.probes.init.engine import DEFAULT_SCHEMES, run_init  # noqa: E402
from audit.probes.run.training import TrainingSetup, compute_loss, synthetic_batches  # noqa: E402


def setup(size: int, batch: int, steps: int) -> TrainingSetup:
    import torchvision

    torch.manual_seed(0)
    return TrainingSetup(model=torchvision.models.resnet18(num_classes=10),
                         data=synthetic_batches((3, size, size), 10, batch, steps, seed=0))


def plain(s: TrainingSetup, passes: int, steps: int) -> float:
    model = s.model
    model.train()
    start = time.perf_counter()
    for p in range(passes):
        if p % steps == 0:
            opt = s.optimizer(model.parameters())
        batch = s.data[p % steps]
        opt.zero_grad(set_to_none=True)
        loss = compute_loss(s, batch)
        loss.backward()
        opt.step()
        loss.item()
    return time.perf_counter() - start


def audit(s: TrainingSetup, steps: int) -> float:
    start = time.perf_counter()
    run_init(s, schemes=list(DEFAULT_SCHEMES), steps=steps, seed=0)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    passes = len(DEFAULT_SCHEMES) * args.steps
    p, a = [], []
    for _ in range(args.rounds):
        p.append(plain(setup(args.size, args.batch, args.steps), passes, args.steps))
        a.append(audit(setup(args.size, args.batch, args.steps), args.steps))
    mp, ma = statistics.median(p), statistics.median(a)
    print(f"resnet18, {len(DEFAULT_SCHEMES)} schemes x {args.steps} steps, batch {args.batch} at "
          f"{args.size}x{args.size}, {torch.get_num_threads()} threads, medians of {args.rounds}")
    print(f"{'plain passes s':>15} {'init audit s':>13} {'ratio':>7}")
    print(f"{mp:>15.2f} {ma:>13.2f} {ma / mp:>7.3f}")


if __name__ == "__main__":
    main()
