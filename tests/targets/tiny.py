"""A healthy bare module: the audit makes synthetic data for it."""
from common import mlp


def build():
    return mlp()
