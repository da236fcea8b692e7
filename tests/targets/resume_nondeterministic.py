"""Planted: the target reseeds torch from the OS, so even uninterrupted runs differ."""
import torch
from torch import nn
from common import tiny_data
from resume_common import load_pieces, save_pieces


def build():
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3))
    torch.seed()  # PLANTED
    return {"model": model, "data": tiny_data(), "save": save_pieces, "load": load_pieces}
