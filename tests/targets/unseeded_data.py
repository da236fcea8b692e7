"""Planted: the dataset adds noise from a NumPy generator made without a seed."""
import numpy as np
import torch
from common import mlp, tiny_data


class Noisy:
    def __init__(self):
        self.batches = tiny_data()
        self.rng = np.random.default_rng()  # PLANTED: no seed

    def __iter__(self):
        for x, y in self.batches:
            yield x + torch.from_numpy(self.rng.normal(0, 0.1, x.shape).astype("float32")), y


def build():
    return {"model": mlp(), "data": Noisy()}
