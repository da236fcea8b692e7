"""Planted: an LR scheduler the checkpoint leaves out."""
from functools import partial

import torch
from common import mlp, tiny_data
from resume_common import load_pieces, save_pieces


def build():
    return {"model": mlp(), "data": tiny_data(),
            "scheduler": lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5),
            "save": partial(save_pieces, scheduler=False),  # PLANTED
            "load": load_pieces}
