"""Planted: the initial weights are drawn from a seed computed with hash() of a string, which
Python salts per process unless PYTHONHASHSEED is fixed."""
import torch
from common import mlp, tiny_data


def build():
    model = mlp()
    gen = torch.Generator().manual_seed(hash("classifier") % 2**31)  # PLANTED
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return {"model": model, "data": tiny_data()}
