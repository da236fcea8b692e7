"""Planted: the builder reseeds torch from the clock, overriding the matched seed; the initial
parameters differ in every run."""
import time

import torch
from common import mlp, tiny_data


def build():
    torch.manual_seed(time.time_ns() % 2**31)  # PLANTED: a seed computed at run time
    return {"model": mlp(), "data": tiny_data()}
