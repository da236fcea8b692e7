"""Planted: a middle layer sums its features in an order that changes between processes (a
stand-in for a reduction whose order the hardware picks). The sums differ by an ULP or so, so
the loss often rounds alike while the model's outputs already differ."""
import torch
from torch import nn
from common import run_number, tiny_data


class OrderedSum(nn.Module):
    def __init__(self, features):
        super().__init__()
        self.order = list(range(features))
        if run_number("order_sum") % 2:  # PLANTED: the order of the adds
            self.order.reverse()

    def forward(self, x):
        total = torch.zeros_like(x[:, 0])
        for i in self.order:
            total = total + x[:, i] * 1.37
        return x + total[:, None] * 0.5


def build():
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), OrderedSum(16), nn.Linear(16, 3))
    return {"model": model, "data": tiny_data()}
