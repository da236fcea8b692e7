"""Planted: a module mixes the clock into its output; no knob reaches that."""
import time

import torch
from torch import nn
from common import tiny_data


class Clocked(nn.Module):
    def forward(self, x):
        return x + (time.perf_counter_ns() % 1000) * 1e-4  # PLANTED


def build():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), Clocked(), nn.Linear(16, 3))
    return {"model": model, "data": tiny_data()}
