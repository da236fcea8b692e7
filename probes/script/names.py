"""Names for what script mode traces: the models behind the parameters a script trains.

Script mode learns which tensors are trained only when training starts: from the optimizers
(one step per ``optimizer.step()``) or, in a script that updates parameters by hand, from the
autograd graph of its first backward pass (:func:`graph_leaves`). :class:`Naming` finds the
outermost module that holds each tensor with one scan of the live objects and names tensors
as ``model.named_parameters()`` does, with a prefix per model when there are several. A model
wrapped in DDP (or DataParallel) is named as the wrapped model (no ``module.`` prefix).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence
import gc
import sys
import warnings
import torch
from torch import nn

from audit.probes.run.training import tensors_in


def live_modules() -> list[nn.Module]:
    """Every ``nn.Module`` alive in the process (``type()`` checks: no attribute lookups on
    foreign objects)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [o for o in gc.get_objects() if issubclass(type(o), nn.Module)]


def graph_leaves(tensors: Any) -> list[torch.Tensor]:
    """The leaf tensors an autograd graph accumulates gradients into (its trained tensors),
    in a fixed walk order, each once."""
    stack = [t.grad_fn for t in reversed(tensors_in(tensors)) if t.grad_fn is not None]
    seen, out, ids = set(), [], set()
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        var = getattr(fn, "variable", None)
        if isinstance(var, torch.Tensor) and id(var) not in ids:
            ids.add(id(var))
            out.append(var)
        stack.extend(f for f, _ in reversed(fn.next_functions))
    return out


def _main_globals() -> dict[int, str]:
    """``id(tensor) -> name`` for tensors the script keeps as globals (``w1 = torch.randn(...,
    requires_grad=True)`` in an old-style tutorial)."""
    main = sys.modules.get("__main__")
    names: dict[int, str] = {}
    for name, value in list(getattr(main, "__dict__", {}).items()):
        if isinstance(value, torch.Tensor) and not name.startswith("_"):
            names.setdefault(id(value), name)
    return names


class Naming:
    """The traced models (roots) and the names of their modules and tensors."""

    def __init__(self) -> None:
        self.roots: list[tuple[nn.Module, str]] = []  # [(root module, label)]
        self.module_names: dict[nn.Module, str] = {}  # module -> dotted name (with its root's label)
        self._extra: dict[nn.Module, str] = {}

    def name_tensors(self, new: Sequence[tuple[Optional[int], str, torch.Tensor]],
                     groups: dict[int, set[int]]) -> list[str]:
        """Names for ``new`` tensors, each ``(group, fallback, tensor)``: ``group`` says which
        optimizer trains it (None when steps are backward passes), ``groups`` maps each
        optimizer index to the ids of all its tensors (for the model labels)."""
        owner, parent = _owners()
        known = {id(r) for r, _ in self.roots}
        fresh: list[nn.Module] = []
        root_groups: dict[int, set[Optional[int]]] = {}
        for group, _, p in new:
            m = owner.get(id(p))
            if m is None:
                continue
            root = _root(m, parent)
            root_groups.setdefault(id(root), set()).add(group)
            if id(root) not in known:
                known.add(id(root))
                fresh.append(root)
        for index, ids in groups.items():  # a root's other optimizers, for the labels
            for root in [r for r, _ in self.roots] + fresh:
                if ids & {id(p) for p in root.parameters()}:
                    root_groups.setdefault(id(root), set()).add(index)
        self._add_roots(fresh, root_groups)
        named: dict[int, str] = {}
        for root, label in self.roots:
            for name, q in root.named_parameters():
                named.setdefault(id(q), join(label, name))
        plain = _main_globals()
        return [named.get(id(p)) or plain.get(id(p)) or fallback for _, fallback, p in new]

    def _add_roots(self, fresh: list[nn.Module], root_groups: dict[int, set[Optional[int]]]) -> None:
        roots = [r for r, _ in self.roots] + fresh
        for k, root in enumerate(fresh, start=len(self.roots)):
            label = self._label(root, k, roots, root_groups)
            self.roots.append((root, label))
            for name, module in root.named_modules():
                self.module_names.setdefault(module, join(label, name))

    def _label(self, root: nn.Module, k: int, roots: list[nn.Module],
               root_groups: dict[int, set[Optional[int]]]) -> str:
        """No prefix for a single model; with several, the optimizer that trains it alone
        (``opt1``), else ``model{k}``."""
        if len(roots) == 1 and not self.roots:
            return ""
        groups = root_groups.get(id(root), set()) - {None}
        if len(groups) == 1 and sum((root_groups.get(id(r), set()) - {None}) == groups
                                    for r in roots) == 1:
            return f"opt{next(iter(groups))}"
        return f"model{k}"

    def module_name(self, module: nn.Module) -> str:
        name = self.module_names.get(unwrap(module))
        if name is None:  # not inside a traced model (a loss module, a transform): its class
            name = self._extra.get(module)
            if name is None:
                base = type(module).__name__
                count = sum(1 for v in self._extra.values() if v.rsplit("_", 1)[0] == base or v == base)
                name = base if count == 0 else f"{base}_{count}"
                self._extra[module] = name
        return name

    def modules(self) -> list[str]:
        return [n for root, label in self.roots for n in (join(label, m) for m, _ in root.named_modules())]

    def types(self) -> list[str]:
        """The class name of each module :meth:`modules` names, in the same order."""
        return [type(m).__name__ for root, _ in self.roots for _, m in root.named_modules()]


def _owners() -> tuple[dict[int, nn.Module], dict[int, nn.Module]]:
    """(id(parameter) -> module holding it, id(module) -> its parent) over the live modules."""
    parent: dict[int, nn.Module] = {}
    owner: dict[int, nn.Module] = {}
    for m in live_modules():
        for child in getattr(m, "_modules", {}).values():
            if child is not None:
                parent.setdefault(id(child), m)
        for p in getattr(m, "_parameters", {}).values():
            if p is not None:
                owner.setdefault(id(p), m)
    return owner, parent


def _root(m: nn.Module, parent: dict[int, nn.Module]) -> nn.Module:
    seen: set[int] = set()
    while id(m) in parent and id(m) not in seen:
        seen.add(id(m))
        m = parent[id(m)]
    return unwrap(m)


def unwrap(module: nn.Module) -> nn.Module:
    """The user's model inside a (Distributed)DataParallel wrapper: names without ``module.``."""
    while isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        module = module.module
    return module


def join(label: str, name: str) -> str:
    return f"{label}.{name}" if label and name else (label or name)

