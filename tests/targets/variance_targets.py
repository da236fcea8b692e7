"""Targets of known random structure for ``audit variance`` / ``audit compare``.

* ``full_batch``: one fixed batch, no dropout, no augmentation: only ``init`` can vary it;
  ``crash_seed`` makes training raise when the init seed is that value, ``build_crash_seed``
  the target itself.
* ``dropout_fixed``: dropout, but the target fixes its own init and the data: only
  ``dropout`` can vary it.
* ``loader``: a shuffling DataLoader whose samples get random noise (augmentation), no
  dropout, fixed init: ``data`` and ``augment`` vary it, ``dropout`` cannot.
* ``regression(lr=..., form=...)``: a held-out MSE from ``evaluate``; ``lr=0`` does not
  train; ``form="sum"`` computes exactly what ``form="double"`` does.
* ``unreached``: noise from an unseeded NumPy generator during training.
"""
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from common import mlp, tiny_data


def full_batch(crash_seed=None, build_crash_seed=None):
    if build_crash_seed is not None and torch.initial_seed() == build_crash_seed:
        raise RuntimeError("planted failure while building, for this init seed")
    model = mlp()
    batch = tiny_data(n_batches=1, batch=32)
    step = None
    if crash_seed is not None and torch.initial_seed() == crash_seed:
        def step(model, batch, loss):
            raise ValueError("planted crash for this init seed")
    return {"model": model, "data": batch, "step": step}


def dropout_fixed():
    model = nn.Sequential(nn.Linear(8, 32, ), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3))
    with torch.no_grad():
        g = torch.Generator().manual_seed(7)
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return {"model": model, "data": tiny_data(n_batches=2)}


class NoisyPoints(Dataset):
    def __init__(self):
        self.x, self.y = tiny_data(n_batches=1, batch=24)[0]

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i] + 0.3 * torch.randn(self.x.shape[1]), self.y[i]


def loader():
    model = mlp()
    with torch.no_grad():
        g = torch.Generator().manual_seed(3)
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return {"model": model, "data": DataLoader(NoisyPoints(), batch_size=8, shuffle=True)}


class Double(nn.Module):
    def __init__(self, form):
        super().__init__()
        self.form = form
        self.linear = nn.Linear(4, 1)

    def forward(self, x):
        out = self.linear(x)
        return out + out if self.form == "sum" else 2 * out


def _regression_data(seed, n=64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return x, x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * torch.randn(n, 1, generator=g)


def regression(lr=0.05, form="double"):
    model = Double(form)
    x, y = _regression_data(11)
    held_x, held_y = _regression_data(12)
    data = DataLoader(list(zip(x, y)), batch_size=16, shuffle=True)
    return {"model": model, "data": data, "loss": nn.functional.mse_loss,
            "optimizer": lambda params: torch.optim.SGD(params, lr=lr),
            "evaluate": lambda m: {"mse": float(nn.functional.mse_loss(m(held_x), held_y))}}


def unreached():
    model = mlp()
    data = tiny_data(n_batches=1)
    noise = np.random.default_rng()

    def step(model, batch, loss):
        inputs, targets = batch
        jitter = torch.as_tensor(noise.normal(size=inputs.shape), dtype=inputs.dtype)
        return loss(model(inputs + jitter), targets)

    return {"model": model, "data": data, "step": step}
