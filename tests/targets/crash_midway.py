"""Planted: training raises at the third step."""
import torch
from torch import nn
from common import mlp, tiny_data

calls = {"n": 0}


def loss(output, target):
    calls["n"] += 1
    if calls["n"] == 3:
        raise RuntimeError("the loss blew up at step 2")
    return nn.functional.cross_entropy(output, target)


def build():
    return {"model": mlp(), "data": tiny_data(), "loss": loss}
