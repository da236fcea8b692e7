"""What the non-finite check adds to a traced step (CPU): the gradients' fingerprints with the
finite flag (:func:`fingerprint.scan`, one read of each gradient) against the fingerprints
alone, side by side on the same gradients.

    python benchmarks/bench_finite.py [--repeats 40]

Both run on the built-in example's gradients after one backward pass, alternating, one CPU
thread; the table shows the medians and their ratio.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from audit.example import build
from audit.probes.run import fingerprint
from audit.probes.run.training import TrainingSetup, compute_loss


def gradients() -> list:
    torch.manual_seed(0)
    t = build()
    setup = TrainingSetup(model=t["model"], data=t["data"], loss=t["loss"])
    compute_loss(setup, next(iter(setup.data))).backward()
    return [p.grad for p in setup.model.parameters()]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    grads = gradients()
    times: dict = {"fingerprints": [], "with the finite flag": []}
    for _ in range(args.repeats):
        start = time.perf_counter()
        fingerprint.fingerprints(grads)
        middle = time.perf_counter()
        int(fingerprint.scan(grads).finite)
        times["fingerprints"].append(middle - start)
        times["with the finite flag"].append(time.perf_counter() - middle)
    fp, ff = (statistics.median(times[k]) for k in times)
    print(f"{sum(g.numel() for g in grads)} gradient values, medians of {args.repeats}")
    print(f"  gradient fingerprints  {fp * 1e3:7.2f} ms")
    print(f"  with the finite flag   {ff * 1e3:7.2f} ms  (+{(ff - fp) / fp:.2f}x)")


if __name__ == "__main__":
    main()
