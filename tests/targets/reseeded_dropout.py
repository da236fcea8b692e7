"""Planted: the target reseeds torch from the OS before training; dropout then differs."""
import torch
from torch import nn
from common import tiny_data


def build():
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3))
    data = tiny_data()
    torch.seed()  # PLANTED
    return {"model": model, "data": data}
