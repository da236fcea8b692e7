"""Planted: DataLoader workers deliver batches as they finish (in_order=False), and which worker
is slow differs between runs, so batches arrive in a different order in each run."""
import time

import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info
from common import mlp, run_number


class Slow(Dataset):
    def __init__(self, slow_worker):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(32, 8, generator=g)
        self.y = torch.randint(0, 3, (32,), generator=g)
        self.slow_worker = slow_worker

    def __len__(self):
        return 32

    def __getitem__(self, i):
        info = get_worker_info()
        if info is not None and info.id == self.slow_worker:
            time.sleep(0.03)
        return self.x[i], self.y[i]


def build():
    dataset = Slow(slow_worker=run_number("worker_order") % 2)
    loader = DataLoader(dataset, batch_size=4, shuffle=False, num_workers=2, in_order=False)  # PLANTED
    return {"model": mlp(), "data": loader}
