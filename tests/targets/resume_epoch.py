"""Planted: a shuffled DataLoader; the checkpoint restores the RNG states but not where the
epoch stood, so the resumed pass draws a new order."""
import torch
from torch.utils.data import DataLoader, TensorDataset
from common import mlp
from resume_common import load_pieces, save_pieces


def build():
    g = torch.Generator().manual_seed(0)
    dataset = TensorDataset(torch.randn(32, 8, generator=g), torch.randint(0, 3, (32,), generator=g))
    loader = DataLoader(dataset, batch_size=8, shuffle=True)  # PLANTED: order not saved
    return {"model": mlp(), "data": loader, "save": save_pieces, "load": load_pieces}
