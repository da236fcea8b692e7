"""What the noise-aware recommendation costs: `audit init` (target mode, in one process) with
its extra init seeds against the same audit with one seed per scheme (the audit before it),
on the built-in example, torchvision's resnet18, a clear case (a 20-layer plain ReLU CNN whose
own init is unhealthy: no extra seed may run), and a case where several schemes beat a healthy
own init (a small transformer under GPT-style ``normal_(0, 0.02)``, AdamW). Rounds alternate which audit goes first;
medians, ratios side by side.

    PYTHONPATH=. python benchmarks/bench_init_noise.py [--rounds 3] [--steps 5] [--size 64]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import audit.probes.init.engine as engine  # noqa: E402
from audit.probes.run.target import normalize  # noqa: E402
from audit.probes.run.training import TrainingSetup, synthetic_batches  # noqa: E402


def example() -> TrainingSetup:
    import audit.example

    torch.manual_seed(0)
    return normalize(audit.example.build(), "audit.example:build")


def resnet18(size: int) -> Callable[[], TrainingSetup]:
    def build() -> TrainingSetup:
        import torchvision

        torch.manual_seed(0)
        return TrainingSetup(model=torchvision.models.resnet18(num_classes=10), synthetic=True,
                             data=synthetic_batches((3, size, size), 10, 8, 5, seed=0))
    return build


def plain_relu_cnn() -> TrainingSetup:
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 16, 3, padding=1), nn.ReLU()]
    for _ in range(18):
        layers += [nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()]
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    return TrainingSetup(model=model, synthetic=True,
                         data=synthetic_batches((3, 16, 16), 10, 16, 5, seed=0))


TEXT = ("to be or not to be that is the question whether tis nobler in the mind to suffer "
        "the slings and arrows of outrageous fortune or to take arms against a sea of troubles ") * 4


class TinyLM(nn.Module):
    """Two transformer layers over 16 characters, predicting the next one."""

    def __init__(self, vocab: int = 32, block: int = 16, width: int = 64):
        super().__init__()
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.zeros(block, width))
        layer = nn.TransformerEncoderLayer(width, 4, 4 * width, dropout=0.0, batch_first=True)
        self.body = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(width, vocab)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.tok(x) + self.pos)[:, -1])


def tiny_transformer() -> TrainingSetup:
    chars = sorted(set(TEXT))
    text = torch.tensor([chars.index(c) for c in TEXT])
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(5):
        at = torch.randint(len(text) - 17, (16,), generator=g)
        batches.append((torch.stack([text[i:i + 16] for i in at]), text[at + 16]))
    return TrainingSetup(model=TinyLM(vocab=len(chars)), data=batches,
                         optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))


def one_seed(results: list, run_seed: Callable, thresholds: dict) -> int:
    """The audit before noise-aware ranking: no extra init seed."""
    return 1


def timed(build: Callable[[], TrainingSetup], steps: int, noise_aware: bool) -> tuple:
    setup = build()
    real = engine.settle
    engine.settle = real if noise_aware else one_seed
    try:
        start = time.perf_counter()
        result = engine.run_init(setup, steps=steps, seed=0)
        return time.perf_counter() - start, result
    finally:
        engine.settle = real


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    cases = [("example CNN", example), (f"resnet18 {args.size}px", resnet18(args.size)),
             ("20-layer ReLU CNN", plain_relu_cnn), ("tiny transformer", tiny_transformer)]
    timed(plain_relu_cnn, 1, True)  # warm up imports (scipy) outside the timings
    print(f"{len(engine.DEFAULT_SCHEMES)} schemes x {args.steps} steps, "
          f"{torch.get_num_threads()} threads, medians of {args.rounds}")
    print(f"{'target':<20} {'one seed s':>10} {'noise-aware s':>13} {'ratio':>6}  "
          f"{'seeds':>5}  recommended (noise-aware)")
    for name, build in cases:
        old, new = [], []
        for r in range(args.rounds):
            order = (False, True) if r % 2 == 0 else (True, False)
            for noise_aware in order:
                seconds, result = timed(build, args.steps, noise_aware)
                (new if noise_aware else old).append((seconds, result))
        t_old = statistics.median(s for s, _ in old)
        t_new = statistics.median(s for s, _ in new)
        rec = new[0][1].recommendation
        print(f"{name:<20} {t_old:>10.2f} {t_new:>13.2f} {t_new / t_old:>6.2f}  "
              f"{rec.seeds:>5}  {rec.scheme}")


if __name__ == "__main__":
    main()
