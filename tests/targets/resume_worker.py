"""Planted: DataLoader workers augment with their own RNG; the checkpoint restores the main
process's RNG states, but a resumed pass seeds its workers anew."""
import torch
from torch.utils.data import DataLoader, Dataset
from common import mlp
from resume_common import load_pieces, save_pieces


class Noisy(Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(32, 8, generator=g)
        self.y = torch.randint(0, 3, (32,), generator=g)

    def __len__(self):
        return 32

    def __getitem__(self, i):
        return self.x[i] + 0.1 * torch.randn(8), self.y[i]  # worker-side augmentation


def build():
    loader = DataLoader(Noisy(), batch_size=8, shuffle=False, num_workers=2)  # PLANTED
    return {"model": mlp(), "data": loader, "save": save_pieces, "load": load_pieces}
