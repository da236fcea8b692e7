"""audit: determinism and initialization audits for PyTorch training code.

Importing this package is light (no torch): the pytest plugin and the CLI's argument parsing
load it first. The public surface is the CLI, :class:`Target`, and the pytest fixtures.
"""
from audit.probes.target import Target

__all__ = ["Target"]
__version__ = "0.1.0"
