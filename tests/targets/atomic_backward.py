"""Planted: a CPU stand-in for an atomic-add kernel. The backward pass accumulates the weight
gradient in an order from the OS (no generator) unless deterministic algorithms are on."""
import os

import torch
from torch import nn
from common import tiny_data


class ScatterAccumulate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x @ w.t()

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        parts = [grad[i:i + 1].t() @ x[i:i + 1] for i in range(x.shape[0])]
        order = list(range(len(parts)))
        if not torch.are_deterministic_algorithms_enabled():
            # PLANTED: the order of the adds, from the OS (no generator, as a GPU's scheduler)
            order.sort(key=lambda _: os.urandom(4))
        gw = torch.zeros_like(w)
        for i in order:
            gw = gw + parts[i] * 1.37  # float addition does not associate
        gw = gw / 1.37
        return grad @ w, gw


class AtomicLinear(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in) * 0.3)

    def forward(self, x):
        return ScatterAccumulate.apply(x, self.weight)


def build():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), AtomicLinear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    return {"model": model, "data": tiny_data()}
