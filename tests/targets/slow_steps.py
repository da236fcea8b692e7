"""Planted: a slow training step, with a DataLoader worker process (what an interrupt must end)."""
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from common import mlp


def loss(output, target):
    time.sleep(0.25)
    return torch.nn.functional.cross_entropy(output, target)


def build():
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g))
    loader = DataLoader(data, batch_size=8, num_workers=1, persistent_workers=True)
    return {"model": mlp(), "data": loader, "loss": loss}
