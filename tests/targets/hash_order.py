"""Planted: class ids come from iterating a set of strings (order follows the hash seed)."""
import torch
from common import mlp

NAMES = ["cat", "dog", "bird", "fish", "frog", "horse", "ship", "truck"]


def build():
    classes = {name: i for i, name in enumerate(set(NAMES))}  # PLANTED: set order
    g = torch.Generator().manual_seed(0)
    data = []
    for b in range(3):
        labels = [NAMES[(b * 5 + k) % len(NAMES)] for k in range(6)]
        data.append((torch.randn(6, 8, generator=g), torch.tensor([classes[n] for n in labels])))
    return {"model": mlp(classes=8), "data": data}
