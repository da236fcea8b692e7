"""audit: determinism and initialization audits for PyTorch training code.

Importing this package is light (no torch): the pytest plugin and the CLI's argument parsing
load it first. The public surface is the CLI, :class:`Target`, :func:`run` and :func:`to_json`
(the Python API, :mod:`audit.api`) and the pytest fixtures.
"""
from typing import Any

from audit.probes.run.target import Target

__all__ = ["Target", "run", "to_json"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:  # the API loads the registry only when it is used
    if name in ("run", "to_json"):
        from audit import api

        return getattr(api, name)
    raise AttributeError(f"module 'audit' has no attribute {name!r}")
