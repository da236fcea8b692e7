"""The one seeding function: what "seeded with --seed" means in every audit."""
from __future__ import annotations

import random

import numpy as np

from audit.probes.run import rng_escape


def seed_all(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global RNG and torch (CPU and every CUDA device), as
    the contract says. torch is seeded through the unwrapped ``manual_seed``, so the tool's own
    seeding is never taken for a seeding call of the user's."""
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    rng_escape.seeding_helpers()(seed)
