"""Planted: dropout is active, and the checkpoint leaves torch's RNG state out."""
from functools import partial

from torch import nn
from common import tiny_data
from resume_common import load_pieces, save_pieces


def build():
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3))
    return {"model": model, "data": tiny_data(),
            "save": partial(save_pieces, rng=False),  # PLANTED
            "load": load_pieces}
