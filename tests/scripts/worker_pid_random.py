"""Seeds everything, but each DataLoader worker reseeds Python's random from its process id;
the workers' augmentation (random flips) then differs in every run."""
import os
import random

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


class Flips(Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(48, 12, generator=g)
        self.y = torch.randint(0, 2, (48,), generator=g)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        x = self.x[i]
        if random.random() < 0.5:
            x = x.flip(0)
        return x, self.y[i]


def worker_init(worker_id):
    random.seed(os.getpid())


def main():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    loader = DataLoader(Flips(), batch_size=8, shuffle=True, num_workers=2,
                        worker_init_fn=worker_init)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for xb, yb in loader:
        opt.zero_grad()
        nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()


if __name__ == "__main__":
    main()
