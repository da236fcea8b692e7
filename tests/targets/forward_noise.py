"""Planted: a module draws noise from a generator seeded from the OS."""
import torch
from torch import nn
from common import tiny_data


class NoisyLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.gen = torch.Generator()
        self.gen.seed()  # PLANTED: OS entropy

    def forward(self, x):
        return x + 0.01 * torch.randn(x.shape, generator=self.gen)


def build():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), NoisyLayer(), nn.Linear(16, 3))
    return {"model": model, "data": tiny_data()}
