"""Per-rank overhead of a distributed audit: a DDP step traced (fingerprints, plus the replica
record of buffers at the start of the forward) against the same step plain, side by side in
one process (a gloo group of one rank: no communication, so the ratio is an upper bound).
A step's time is the process's CPU time from one optimizer step's end to the next; each mode's
number is the median over rounds of its median step; the three modes take turns in a rotating
order, so that none always runs first or last in a round.

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

    from audit.probes.run import ranks
    from audit.probes.run.target import load_target

    torch.manual_seed(0)
    setup = load_target(None, batches=4)
    return setup, ranks.prepare(setup, ctx, writer, 0)


def plain(ctx, steps: int) -> float:
    from audit.probes.run.trace import TraceWriter
    from audit.probes.run.training import compute_loss, cycle_batches

    with tempfile.TemporaryDirectory() as folder:
        writer = TraceWriter(os.path.join(folder, "t"))
        setup, tracker = _setup(ctx, writer)
        tracker.close()
        opt = setup.optimizer(setup.model.parameters())
        ends = [time.process_time()]
        for _, batch in cycle_batches(setup.data, steps):
            opt.zero_grad(set_to_none=True)
            compute_loss(setup, batch).backward()
            opt.step()
            ends.append(time.process_time())
        writer.close()
        return _median_step(ends)


def _median_step(ends: list) -> float:
    return statistics.median(b - a for a, b in zip(ends, ends[1:]))


def traced(ctx, steps: int, replica: bool = True) -> float:
    from audit.probes.run.trace import TraceWriter, run_traced

    with tempfile.TemporaryDirectory() as folder:
        writer = TraceWriter(os.path.join(folder, "t"))
        setup, tracker = _setup(ctx, writer)
        ends = [time.process_time()]
        if not replica:
            tracker.close()  # fingerprints only: no buffer record per step

        def on_step(done: int) -> None:
            if replica:
                tracker.on_step(done)
            ends.append(time.process_time())

        run_traced(setup, steps, ctx.device, writer, on_step=on_step)
        seconds = _median_step(ends)
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

    from audit.probes.run import ranks, rendezvous
    from audit.probes.run.spec import DistSpec

    store = rendezvous.host_store(1)  # noqa: F841 (serves the rank while it lives)
    os.environ.update(RANK="0", WORLD_SIZE="1", **rendezvous.client_env(store.port))
    ctx = ranks.start(DistSpec(nproc=1), torch.device("cpu"))
    try:
        modes = [lambda: plain(ctx, args.steps), lambda: traced(ctx, args.steps, replica=False),
                 lambda: traced(ctx, args.steps)]
        rows = []
        for r in range(args.rounds):
            row = [0.0] * 3
            for i in [(r + k) % 3 for k in range(3)]:
                row[i] = modes[i]()
            rows.append(row)
    finally:
        ranks.finish()
    p, f, t = (statistics.median(row[i] for row in rows) for i in range(3))
    print(f"built-in CNN under DDP, {args.steps} steps x {args.rounds} rounds (medians, CPU time): "
          f"plain {p * 1000:.1f} ms/step; fingerprints {f * 1000:.1f} ms/step "
          f"(+{100 * (f / p - 1):.1f}%); fingerprints + replica record {t * 1000:.1f} ms/step "
          f"(+{100 * (t / p - 1):.1f}%)")


if __name__ == "__main__":
    main()
