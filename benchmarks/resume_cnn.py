"""The course CNN with a complete checkpoint, for ``bench_resume.py``: dropout, synthetic
CIFAR-shaped batches (a list), Adam, and save/load that keep model, optimizer and RNG states."""
import random

import numpy as np
import torch

from audit.example import SimpleCNN


def save(path, objects):
    torch.save({"model": objects["model"].state_dict(), "optimizer": objects["optimizer"].state_dict(),
                "rng": (torch.get_rng_state(), np.random.get_state(), random.getstate())}, path)


def load(path, objects):
    checkpoint = torch.load(path, weights_only=False)
    objects["model"].load_state_dict(checkpoint["model"])
    objects["optimizer"].load_state_dict(checkpoint["optimizer"])
    torch_state, numpy_state, python_state = checkpoint["rng"]
    torch.set_rng_state(torch_state)
    np.random.set_state(numpy_state)
    random.setstate(python_state)


def build(batches=8, batch_size=32):
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(batch_size, 3, 32, 32, generator=g), torch.randint(0, 10, (batch_size,), generator=g))
            for _ in range(batches)]
    return {"model": SimpleCNN(), "data": data, "save": save, "load": load,
            "optimizer": lambda params: torch.optim.Adam(params, lr=1e-3)}
