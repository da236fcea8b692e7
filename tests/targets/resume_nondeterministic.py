"""Planted: the model adds noise from a NumPy generator seeded by the OS, so even two
uninterrupted runs differ (and no checkpoint of the global RNG states captures it)."""
import numpy as np
import torch
from torch import nn
from common import mlp, tiny_data
from resume_common import load_pieces, save_pieces


class Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = mlp()
        self.rng = np.random.default_rng()  # PLANTED: OS-seeded

    def forward(self, x):
        noise = torch.from_numpy(self.rng.normal(0, 0.01, tuple(x.shape)).astype("float32"))
        return self.body(x + noise)


def build():
    return {"model": Noisy(), "data": tiny_data(), "save": save_pieces, "load": load_pieces}
