"""CUDA: an embedding-style gather whose backward is index_add_ (atomic adds on the GPU), and
cuDNN autotuning turned on by the target."""
import torch
from torch import nn


class Gather(nn.Module):
    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(64, 32))

    def forward(self, idx):
        return self.table.index_select(0, idx)  # backward: index_add_ with atomics


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.gather = Gather()
        self.conv = nn.Conv1d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 * 32, 5)

    def forward(self, idx):
        h = self.gather(idx).unsqueeze(1)
        return self.head(torch.relu(self.conv(h)).flatten(1))


def build():
    torch.backends.cudnn.benchmark = True
    g = torch.Generator().manual_seed(0)
    # many repeated indices: many atomic adds into the same rows
    data = [(torch.randint(0, 8, (4096,), generator=g), torch.randint(0, 5, (4096,), generator=g))
            for _ in range(3)]
    return {"model": Net(), "data": data}
