"""Shared pieces of the planted resume trainers: checkpoint dicts with chosen pieces left out."""
import random

import numpy as np
import torch


def save_pieces(path, objects, *, optimizer=True, scheduler=True, rng=True, extra=None):
    checkpoint = {"model": objects["model"].state_dict()}
    if optimizer:
        checkpoint["optimizer"] = objects["optimizer"].state_dict()
    if scheduler and objects["scheduler"] is not None:
        checkpoint["scheduler"] = objects["scheduler"].state_dict()
    if rng:
        checkpoint["rng"] = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    checkpoint.update(extra or {})
    torch.save(checkpoint, path)


def load_pieces(path, objects):
    checkpoint = torch.load(path, weights_only=False)
    objects["model"].load_state_dict(checkpoint["model"])
    if "optimizer" in checkpoint:
        objects["optimizer"].load_state_dict(checkpoint["optimizer"])
    if "scheduler" in checkpoint:
        objects["scheduler"].load_state_dict(checkpoint["scheduler"])
    if "rng" in checkpoint:
        torch_state, numpy_state, python_state = checkpoint["rng"]
        torch.set_rng_state(torch_state)
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    return checkpoint
