"""Per-rank overhead of a distributed audit: a DDP step traced (fingerprints, plus the replica
record of buffers at the start of the forward) against the same step plain, side by side in
one process (a gloo group of one rank: no communication, so the ratio is an upper bound).

    PYTHONPATH=. python benchmarks/bench_distributed.py [--rounds 5] [--steps 20]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _setup(ctx, writer):
    import torch

    from audit.probes import ranks
    from audit.probes.target import load_target

    torch.manual_seed(0)
    setup = load_target(None, batches=4)
    return setup, ranks.prepare(setup, ctx, writer, 0)


def plain(ctx, steps: int) -> float:
    from audit.probes.trace import TraceWriter
    from audit.probes.training import compute_loss, cycle_batches

    with tempfile.TemporaryDirectory() as folder:
        writer = TraceWriter(os.path.join(folder, "t"))
        setup, tracker = _setup(ctx, writer)
        tracker.close()
        opt = setup.optimizer(setup.model.parameters())
        start = time.perf_counter()
        for _, batch in cycle_batches(setup.data, steps):
            opt.zero_grad(set_to_none=True)
            compute_loss(setup, batch).backward()
            opt.step()
        writer.close()
        return (time.perf_counter() - start) / steps


def traced(ctx, steps: int, replica: bool = True) -> float:
    from audit.probes.trace import TraceWriter, run_traced

    with tempfile.TemporaryDirectory() as folder:
        writer = TraceWriter(os.path.join(folder, "t"))
        setup, tracker = _setup(ctx, writer)
        start = time.perf_counter()
        if not replica:
            tracker.close()  # fingerprints only: no buffer record per step
        run_traced(setup, steps, ctx.device, writer, on_step=tracker.on_step if replica else None)
        seconds = (time.perf_counter() - start) / steps
        if replica:
            tracker.close()
        writer.close()
        return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    import torch

    from audit.probes import ranks

    from audit.probes.determinism.rank_launch import free_port

    os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(free_port()))
    ctx = ranks.start({}, torch.device("cpu"))
    try:
        rows = [(plain(ctx, args.steps), traced(ctx, args.steps, replica=False),
                 traced(ctx, args.steps)) for _ in range(args.rounds)]
    finally:
        ranks.finish()
    p, f, t = (statistics.median(row[i] for row in rows) for i in range(3))
    print(f"built-in CNN under DDP, {args.steps} steps x {args.rounds} rounds (medians): "
          f"plain {p * 1000:.1f} ms/step; fingerprints {f * 1000:.1f} ms/step "
          f"(+{100 * (f / p - 1):.1f}%); fingerprints + replica record {t * 1000:.1f} ms/step "
          f"(+{100 * (t / p - 1):.1f}%)")


if __name__ == "__main__":
    main()
