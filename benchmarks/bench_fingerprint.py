"""What fingerprinting adds to a training step (CPU): plain steps vs traced steps, side by side.

    PYTHONPATH=. python benchmarks/bench_fingerprint.py [--rounds 3] [--steps 8] [--clock cpu]
    PYTHONPATH=. python benchmarks/bench_fingerprint.py --profile

For each model, each round trains the same setup twice at once, one step of each in turn: a
traced step, then a plain step, so both see the machine in the same state (other jobs, clock
speed). A step's time is its wall time (``--clock cpu``: the process's CPU time, steadier on a
machine other jobs share); the table shows the median step times, the median of the per-step
ratios traced/plain, and the middle half of those ratios. ``--profile`` shows
where a traced step's extra time goes (each part's median CPU time, as a share of a plain step,
measured side by side): parameter fingerprints, gradient fingerprints with the finite flag,
the batch's (whole and per sample), the RNG digests, the record's JSON.
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

from audit.probes.run.trace import TraceWriter, run_traced  # noqa: E402
from audit.probes.run.training import TrainingSetup, compute_loss, cycle_batches, synthetic_batches  # noqa: E402


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


CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter


def plain_steps(setup, steps):
    """A plain training loop, one step per ``next()``."""
    model = setup.model
    model.train()
    opt = setup.optimizer(model.parameters())
    for _, batch in cycle_batches(setup.data, steps):
        opt.zero_grad(set_to_none=True)
        loss = compute_loss(setup, batch)
        loss.backward()
        opt.step()
        loss.item()  # the host sync a training loop makes when it logs the loss
        yield


def interleaved(make, steps):
    """Per step, (plain seconds, traced seconds): a traced run whose every step is followed by
    one step of a plain run of the same setup, so both see the machine in the same state."""
    torch.manual_seed(0)
    plain = plain_steps(make(), steps)
    torch.manual_seed(0)
    traced_setup = make()
    pairs: list = []
    mark = [0.0]

    def after_traced_step(done):
        traced = clock() - mark[0]
        started = clock()
        next(plain)
        pairs.append((clock() - started, traced))
        mark[0] = clock()

    with tempfile.TemporaryDirectory() as folder:
        writer = TraceWriter(os.path.join(folder, "t"))
        mark[0] = clock()
        run_traced(traced_setup, steps, torch.device("cpu"), writer, on_step=after_traced_step)
        writer.close()
    return pairs[1:]  # the first step warms up


def profile(name: str, rounds: int) -> None:
    """Each part of a traced step's extra work, timed side by side with plain steps."""
    import json

    from audit.probes.run import fingerprint as fp
    from audit.probes.run import trace
    from audit.probes.run.training import split_batch

    torch.manual_seed(0)
    setup = {"example": example, "resnet18": resnet18}[name]()
    model, batch = setup.model, setup.data[0]
    opt = setup.optimizer(model.parameters())
    params = list(model.parameters())

    def step():
        opt.zero_grad(set_to_none=True)
        compute_loss(setup, batch).backward()
        opt.step()

    step()
    grads = [p.grad for p in params]
    inputs, targets = split_batch(batch)
    record = trace.step_fields(trace.combine([fp.fingerprint(t) for t in inputs]), 0,
                               [trace.batch_parts(inputs)[1]], [], [], trace.grad_parts(grads).values, params)
    parts = {
        "plain step": step,
        "parameters": lambda: fp.fingerprints(params),
        "gradients": lambda: trace.grad_parts(grads),  # and their finite flag
        "batch": lambda: (trace.batch_parts(inputs), trace.batch_parts(targets)),
        "rng digests": lambda: trace.rng_fingerprints(torch.device("cpu")),
        "json record": lambda: json.dumps(record, separators=(",", ":")),
        "(floor: sum)": lambda: [t.sum() for t in params + grads + inputs],
    }
    times: dict = {k: [] for k in parts}
    for _ in range(rounds):
        for key, fn in parts.items():
            started = time.process_time()
            fn()
            times[key].append(time.process_time() - started)
    base = statistics.median(times["plain step"])
    print(f"{name}: plain step {base * 1000:.1f} ms CPU")
    for key in list(parts)[1:]:
        t = statistics.median(times[key])
        print(f"  {key:<14} {t * 1000:>8.2f} ms  {t / base * 100:>6.2f}%")


def main() -> None:
    global clock
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--models", default="example,resnet18")
    ap.add_argument("--clock", choices=sorted(CLOCK), default="wall")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    clock = CLOCK[args.clock]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, {args.clock} clock")
    if args.profile:
        for name in args.models.split(","):
            profile(name, max(args.rounds, 5))
        return
    print(f"{'model':<10} {'plain ms/step':>14} {'traced ms/step':>15} {'ratio':>7} "
          f"{'pairs':>6} {'middle half of ratios':>22}")
    for name in args.models.split(","):
        make = {"example": example, "resnet18": resnet18}[name]
        pairs = [pair for _ in range(args.rounds) for pair in interleaved(make, args.steps)]
        ratios = sorted(t / p for p, t in pairs)
        p = statistics.median(p for p, _ in pairs)
        t = statistics.median(t for _, t in pairs)
        quarter = len(ratios) // 4
        print(f"{name:<10} {p * 1000:>14.1f} {t * 1000:>15.1f} {statistics.median(ratios):>7.3f} "
              f"{len(ratios):>6} {ratios[quarter]:>10.3f} .. {ratios[-1 - quarter]:.3f}")


if __name__ == "__main__":
    main()
