"""Planted: a reduction split into as many chunks as there are threads, and a thread count that
alternates between processes, so runs sum in different orders."""

import torch
from torch import nn
from common import run_number, tiny_data


class ChunkedSum(nn.Module):
    def forward(self, x):
        chunks = torch.get_num_threads() + 1
        pieces = torch.chunk(x * 1.1, chunks, dim=1)
        total = pieces[0].sum(1, keepdim=True)
        for p in pieces[1:]:
            total = total + p.sum(1, keepdim=True)
        return x + total * 1e-3


def build():
    torch.set_num_threads(1 + run_number("thread_sum") % 2)  # PLANTED: varies between processes
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), ChunkedSum(), nn.Linear(16, 3))
    return {"model": model, "data": tiny_data()}
