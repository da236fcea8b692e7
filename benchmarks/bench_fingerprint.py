"""What fingerprinting adds to a training step (CPU): plain steps vs traced steps, side by side.

    PYTHONPATH=. python benchmarks/bench_fingerprint.py [--rounds 3] [--steps 8]

For each model, rounds alternate plain and traced training of the same setup; a step's time is
the wall time between optimizer steps; the table shows the medians and their ratio.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from audit.probes.trace import TraceWriter, run_traced  # noqa: E402
from audit.probes.training import TrainingSetup, compute_loss, cycle_batches, synthetic_batches  # noqa: E402


def example():
    from audit.example import build

    t = build()
    batches = []
    for i, b in enumerate(t["data"]):
        batches.append(b)
        if i == 3:
            break
    return TrainingSetup(model=t["model"], data=batches, loss=t["loss"], optimizer=t["optimizer"])


def resnet18():
    import torchvision

    model = torchvision.models.resnet18(num_classes=10)
    return TrainingSetup(model=model, data=synthetic_batches((3, 224, 224), 10, 8, 2, seed=0))


def plain(setup, steps):
    model = setup.model
    model.train()
    opt = setup.optimizer(model.parameters())
    stamps = [time.perf_counter()]
    for _, batch in cycle_batches(setup.data, steps):
        opt.zero_grad(set_to_none=True)
        loss = compute_loss(setup, batch)
        loss.backward()
        opt.step()
        loss.item()  # the host sync a training loop makes when it logs the loss
        stamps.append(time.perf_counter())
    return [b - a for a, b in zip(stamps, stamps[1:])]


def traced(setup, steps):
    stamps = []
    with tempfile.TemporaryDirectory() as folder:
        writer = TraceWriter(os.path.join(folder, "t"))
        stamps.append(time.perf_counter())
        run_traced(setup, steps, torch.device("cpu"), writer, on_step=lambda i: stamps.append(time.perf_counter()))
        writer.close()
    return [b - a for a, b in zip(stamps, stamps[1:])]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--models", default="example,resnet18")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    print(f"{'model':<10} {'plain ms/step':>14} {'traced ms/step':>15} {'ratio':>7}")
    for name in args.models.split(","):
        make = {"example": example, "resnet18": resnet18}[name]
        times = {"plain": [], "traced": []}
        for _ in range(args.rounds):
            for mode, fn in (("plain", plain), ("traced", traced)):
                torch.manual_seed(0)
                setup = make()
                times[mode] += fn(setup, args.steps)[1:]  # the first step warms up
        p, t = statistics.median(times["plain"]), statistics.median(times["traced"])
        print(f"{name:<10} {p * 1000:>14.1f} {t * 1000:>15.1f} {t / p:>7.3f}")


if __name__ == "__main__":
    main()
