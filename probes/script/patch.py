"""Putting the audit's wrapper in place of a library function, dressed as the original."""
from __future__ import annotations

from typing import Any


def swap(owner: Any, name: str, replacement: Any) -> Any:
    """Set ``owner.name`` to ``replacement``, which takes the original's ``__wrapped__``,
    ``__name__`` and ``__doc__``; returns the original, for the caller to put back."""
    original = getattr(owner, name)
    replacement.__wrapped__ = original
    replacement.__name__ = getattr(original, "__name__", name)
    replacement.__doc__ = getattr(original, "__doc__", None)
    setattr(owner, name, replacement)
    return original
