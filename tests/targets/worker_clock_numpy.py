"""Planted: a worker_init_fn reseeds NumPy from the clock; the workers' augmentation noise then
differs in every run."""
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from common import mlp


class Noisy(Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(32, 8, generator=g)
        self.y = torch.randint(0, 3, (32,), generator=g)

    def __len__(self):
        return 32

    def __getitem__(self, i):
        noise = torch.from_numpy(np.random.normal(0, 0.1, 8).astype("float32"))
        return self.x[i] + noise, self.y[i]


def reseed(worker_id):
    np.random.seed(int(time.time() * 1e6) % 2**32)  # PLANTED: the clock, not the loader's seed


def build():
    loader = DataLoader(Noisy(), batch_size=4, shuffle=True, num_workers=2, worker_init_fn=reseed)
    return {"model": mlp(), "data": loader}
