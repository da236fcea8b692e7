"""Planted: the model ends its own process (os._exit(0)) in the forward pass of step 2."""
import os

from torch import nn

from common import mlp, tiny_data


class Quits(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = mlp()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 3:
            os._exit(0)
        return self.body(x)


def build():
    return {"model": Quits(), "data": tiny_data()}
