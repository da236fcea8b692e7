"""A reduction split into as many chunks as torch has threads (``OMP_NUM_THREADS``): the same
numbers on every run with the same thread count, other numbers with another count. The code
does not change; the environment does (``audit diff --against`` names it)."""

import torch
from torch import nn
from common import tiny_data


class ChunkedSum(nn.Module):
    def forward(self, x):
        pieces = torch.chunk(x * 1.1, torch.get_num_threads() + 1, dim=1)
        total = pieces[0].sum(1, keepdim=True)
        for p in pieces[1:]:
            total = total + p.sum(1, keepdim=True)
        return x + total * 1e-3


def build():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), ChunkedSum(), nn.Linear(16, 3))
    return {"model": model, "data": tiny_data()}
