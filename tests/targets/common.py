"""Small shared pieces of the planted targets (each target file is loaded on its own)."""
import torch
from torch import nn


def tiny_data(n_batches=4, batch=8, features=8, classes=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, features, generator=g), torch.randint(0, classes, (batch,), generator=g))
            for _ in range(n_batches)]


def mlp(features=8, hidden=16, classes=3):
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))
