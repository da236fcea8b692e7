"""Planted: SGD with momentum, and the checkpoint keeps the model but not the optimizer."""
from functools import partial

import torch
from common import mlp, tiny_data
from resume_common import load_pieces, save_pieces


def build():
    return {"model": mlp(), "data": tiny_data(),
            "optimizer": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
            "save": partial(save_pieces, optimizer=False),  # PLANTED
            "load": load_pieces}
