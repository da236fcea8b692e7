"""Planted: an optimizer whose update sums its terms in an order drawn from the OS unless
deterministic algorithms are on (a stand-in for a fused, atomic multi-tensor kernel)."""
import os

import torch
from common import mlp, tiny_data


class ScrambledSGD(torch.optim.Optimizer):
    def __init__(self, params, lr=0.1):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                parts = [p.grad * 0.31, p.grad * 0.17, p.grad * 0.52, p.grad * 1.3e-3]
                if not torch.are_deterministic_algorithms_enabled():
                    k = os.urandom(1)[0] % len(parts)  # PLANTED: the order of the adds
                    parts = parts[k:] + parts[:k]
                update = torch.zeros_like(p)
                for part in parts:
                    update = update + part
                p.add_(update, alpha=-group["lr"])


def build():
    return {"model": mlp(), "data": tiny_data(), "optimizer": lambda params: ScrambledSGD(params)}
