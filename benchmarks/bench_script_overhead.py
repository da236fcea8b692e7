"""Per-step overhead of script mode against target mode, on the same small CNN training.

One process trains the built-in example's CNN (three conv+BN+ReLU+pool blocks, a 512-unit
hidden layer) on CIFAR-shaped batches three ways:

* ``plain``: the training loop with no audit at all;
* ``target``: target mode's tracing (:func:`probes.run.trace.run_traced`);
* ``script``: the same loop as ``plain`` written as a user's script, under script mode's hooks
  (:class:`probes.script.tracer.ScriptTracer`, installed as the bootstrap installs them, and
  removed after the trial).

The three take turns trial by trial, on the very same model and data tensors (the weights are
put back before each trial), so memory layout is alike and a busy machine slows them alike. A
step's time runs from the end of one optimizer step to the end of the next (the batch fetch,
forward, backward, update and every fingerprint), in the training thread's CPU time by default
(the time other processes take the core does not count; ``--clock wall`` for elapsed time);
each trial's first step (header, init record, the scan that names the models) is left out. It
does so twice: with a ``DataLoader`` (the usual script), and with in-memory batches (no
DataLoader: script mode then fingerprints the model's inputs through global module hooks).

The table gives, per mode, the median over trials of each trial's median step time and its
overhead over ``plain``, and ``script / target``: per pair of trials run side by side the ratio
of their medians, then the median of those ratios (the number the 5% budget is about).

    PYTHONPATH=. python benchmarks/bench_script_overhead.py [--trials 15] [--steps 15] [--batch 32]
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from audit.example import SimpleCNN  # noqa: E402
from audit.probes.script.tracer import ScriptTracer  # noqa: E402
from audit.probes.run.trace import TraceWriter, run_traced  # noqa: E402
from audit.probes.run.training import TrainingSetup  # noqa: E402

MODES = ("plain", "target", "script")
CLOCKS = {"cpu": time.thread_time, "wall": time.perf_counter}


def make_data(batch: int, batches: int, loader: bool):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(batch * batches, 3, 32, 32, generator=g)
    labels = torch.randint(0, 10, (batch * batches,), generator=g)
    if loader:
        return DataLoader(TensorDataset(images, labels), batch_size=batch, shuffle=True,
                          generator=torch.Generator().manual_seed(1))
    return [(images[i:i + batch], labels[i:i + batch]) for i in range(0, len(images), batch)]


def make_optimizer(params):
    return torch.optim.Adam(params, lr=1e-3)


def user_loop(model, data, steps: int, ends: list, clock) -> None:
    """What a training script does."""
    model.train()
    opt = make_optimizer(model.parameters())
    done = 0
    while done < steps:
        for images, labels in data:
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(images), labels)
            loss.backward()
            opt.step()
            ends.append(clock())
            done += 1
            if done >= steps:
                return


def trial(mode: str, model, start: dict, data, steps: int, folder: str, clock) -> float:
    """One trial's median step time (seconds), its first step left out."""
    model.load_state_dict(start)
    ends: list = []
    writer = TraceWriter(os.path.join(folder, f"{mode}-{time.perf_counter_ns()}.trace"))
    try:
        if mode == "plain":
            user_loop(model, data, steps + 1, ends, clock)
        elif mode == "target":
            run_traced(TrainingSetup(model, data, optimizer=make_optimizer), steps + 1,
                       torch.device("cpu"), writer, on_step=lambda n: ends.append(clock()))
        else:
            tracer = ScriptTracer(writer, steps + 2)  # the loop ends first: no stop inside
            tracer.install()
            try:
                user_loop(model, data, steps + 1, ends, clock)
            finally:
                tracer.uninstall()
    finally:
        writer.close()
    return statistics.median(b - a for a, b in zip(ends, ends[1:]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=15, help="trials per mode and kind of data")
    parser.add_argument("--steps", type=int, default=15, help="measured steps per trial")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                        help="cpu: the training thread's CPU time (default); wall: elapsed time")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    clock = CLOCKS[args.clock]
    torch.manual_seed(0)
    model = SimpleCNN()
    start = copy.deepcopy(model.state_dict())
    print(f"SimpleCNN, batch {args.batch}, {args.trials} trials x {args.steps} steps per mode, "
          f"{args.threads} CPU thread(s), {args.clock} time, torch {torch.__version__}")
    print(f"{'data':<12}{'mode':<17}{'ms/step':>9}{'vs plain':>10}")
    with tempfile.TemporaryDirectory() as folder:
        for loader in (True, False):
            data = make_data(args.batch, args.steps + 1, loader)
            for mode in MODES:  # warm-up: every path's first-call costs
                trial(mode, model, start, data, 2, folder, clock)
            medians = {m: [] for m in MODES}
            for i in range(args.trials):
                order = MODES if i % 2 == 0 else MODES[::-1]
                for mode in order:
                    medians[mode].append(trial(mode, model, start, data, args.steps, folder, clock))
            label = "DataLoader" if loader else "in-memory"
            median = {m: statistics.median(medians[m]) * 1e3 for m in MODES}
            for mode in MODES:
                over = "" if mode == "plain" else f"{(median[mode] / median['plain'] - 1) * 100:+.1f}%"
                print(f"{label:<12}{mode:<17}{median[mode]:>9.2f}{over:>10}")
            ratios = [s / t for s, t in zip(medians["script"], medians["target"])]
            print(f"{label:<12}{'script / target':<17}{statistics.median(ratios):>9.3f}   "
                  f"(quartiles {statistics.quantiles(ratios, n=4)[0]:.3f}-"
                  f"{statistics.quantiles(ratios, n=4)[2]:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
