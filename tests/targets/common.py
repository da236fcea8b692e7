"""Small shared pieces of the planted targets (each target file is loaded on its own)."""
import os

import torch
from torch import nn


def tiny_data(n_batches=4, batch=8, features=8, classes=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, features, generator=g), torch.randint(0, classes, (batch,), generator=g))
            for _ in range(n_batches)]


def mlp(features=8, hidden=16, classes=3):
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def run_number(name: str) -> int:
    """Which run of an audit this process is: a counter file the tests name (one per planted
    target), else the process id. Lets a target behave differently in consecutive runs."""
    base = os.environ.get("AUDIT_TEST_COUNTER")
    if not base:
        return os.getpid()
    with open(f"{base}.{name}", "a+") as fh:
        fh.seek(0)
        n = len(fh.read())
        fh.write("x")
    return n
