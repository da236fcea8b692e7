"""What a script's loss is compared with: the targets given to ``torch.nn.functional`` losses.

Script mode fingerprints the data a step trains on wherever it comes from. DataLoader batches
are seen as they arrive; tensors made in the loop are seen where they enter the model (the
first module call of the step) and where they meet the loss: the ``target`` argument of the
functional losses, which the loss modules (``nn.CrossEntropyLoss`` ...) call too.
:func:`install` wraps those functions and reports each target to a callback.
"""
from __future__ import annotations

from types import ModuleType
from typing import Any, Callable, Optional

import torch
from torch.nn import functional as F

#: functional loss -> (position of the target argument, its keyword)
LOSS_TARGETS = {
    "cross_entropy": (1, "target"), "nll_loss": (1, "target"), "mse_loss": (1, "target"),
    "l1_loss": (1, "target"), "smooth_l1_loss": (1, "target"), "huber_loss": (1, "target"),
    "binary_cross_entropy": (1, "target"), "binary_cross_entropy_with_logits": (1, "target"),
    "kl_div": (1, "target"), "poisson_nll_loss": (1, "target"), "gaussian_nll_loss": (1, "target"),
    "hinge_embedding_loss": (1, "target"), "soft_margin_loss": (1, "target"),
    "multilabel_margin_loss": (1, "target"), "multilabel_soft_margin_loss": (1, "target"),
    "multi_margin_loss": (1, "target"), "cosine_embedding_loss": (2, "target"),
    "margin_ranking_loss": (2, "target"), "ctc_loss": (1, "targets"),
}


def target_of(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Optional[torch.Tensor]:
    """The target tensor given to functional loss ``name``, or None."""
    position, keyword = LOSS_TARGETS[name]
    value = args[position] if len(args) > position else kwargs.get(keyword)
    return value if isinstance(value, torch.Tensor) else None


def install(on_target: Callable[[torch.Tensor], None]) -> list[tuple[ModuleType, str, Callable[..., Any]]]:
    """Wrap the functional losses; returns ``[(owner, name, original)]`` for the caller to put
    back. ``on_target(tensor)`` is called with each target before the loss runs."""
    patches = []
    for name in LOSS_TARGETS:
        original = getattr(F, name, None)
        if original is None:
            continue
        setattr(F, name, _wrap(name, original, on_target))
        patches.append((F, name, original))
    return patches


def _wrap(name: str, original: Callable[..., Any],
          on_target: Callable[[torch.Tensor], None]) -> Callable[..., Any]:
    def loss(*args: Any, **kwargs: Any) -> Any:
        target = target_of(name, args, kwargs)
        if target is not None:
            on_target(target)
        return original(*args, **kwargs)

    loss.__wrapped__ = original  # type: ignore[attr-defined]  # as functools.wraps sets it
    loss.__name__ = original.__name__
    loss.__doc__ = original.__doc__
    return loss


def is_loss_module(module: Any) -> bool:
    """A loss module: torch's (``_Loss``) or the script's own (a class named ``...Loss``)."""
    return isinstance(module, torch.nn.modules.loss._Loss) or type(module).__name__.endswith("Loss")
