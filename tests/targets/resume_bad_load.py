"""Planted: load reads a key that save never wrote."""
import torch
from common import mlp, tiny_data


def save(path, objects):
    torch.save({"model": objects["model"].state_dict()}, path)


def load(path, objects):
    checkpoint = torch.load(path, weights_only=False)
    objects["optimizer"].load_state_dict(checkpoint["optimizer"])  # PLANTED: KeyError


def build():
    return {"model": mlp(), "data": tiny_data(), "save": save, "load": load}
