"""Planted: the builder calls np.random.seed() with no argument, which reseeds NumPy's global
generator from the operating system; the data drawn from it then differ in every run."""
import numpy as np
import torch
from common import mlp


def build():
    np.random.seed()  # PLANTED: no argument, OS entropy
    x = torch.from_numpy(np.random.randn(4, 8, 8).astype("float32"))
    y = torch.from_numpy(np.random.randint(0, 3, (4, 8)))
    return {"model": mlp(), "data": list(zip(x, y))}
