"""Planted: the loss becomes NaN at step 2 (0-based), the same in every run."""
import torch
from torch import nn

from common import mlp, tiny_data

calls = {"n": 0}


def loss(output, target):
    calls["n"] += 1
    value = nn.functional.cross_entropy(output, target)
    return value * float("nan") if calls["n"] == 3 else value


def build():
    torch.manual_seed(0)
    return {"model": mlp(), "data": tiny_data(), "loss": loss}
