"""Planted: building the target fails inside a helper of the user's code."""
from common import mlp


def make_data(path):
    with open(path) as fh:  # FAILS HERE
        return fh.read()


def build():
    return {"model": mlp(), "data": make_data("no-such-file.csv")}
