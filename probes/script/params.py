"""The tensors script mode traces, and their names.

With optimizers, the parameters of every optimizer the script made (:meth:`TracedParams.
register`, in creation order: the index in ``opt{i}``), optimizer then group order, including
those of an optimizer made or given parameters after the first step; without, the leaves of the
first backward pass's graph that require gradients, in model order. Names come from
:class:`probes.script.names.Naming` (with several models, a prefix says which optimizer's model
parted: ``opt1.main.0.weight``).
"""
from __future__ import annotations

import weakref
from typing import Any, Optional

import torch

from audit.probes.script.names import Naming, graph_leaves


def _count(opt: torch.optim.Optimizer) -> int:
    return sum(len(g["params"]) for g in opt.param_groups)


class TracedParams:
    """``params`` and ``names`` (in the same order), the optimizers the script made."""

    def __init__(self) -> None:
        self.params: list[torch.Tensor] = []
        self.names: list[str] = []
        self.naming = Naming()
        self._optimizers: list[weakref.ref[torch.optim.Optimizer]] = []  # creation order
        self._index: weakref.WeakKeyDictionary[torch.optim.Optimizer, int] = \
            weakref.WeakKeyDictionary()
        self._traced: weakref.WeakKeyDictionary[torch.optim.Optimizer, int] = \
            weakref.WeakKeyDictionary()  # optimizer -> parameter count traced
        self._ids: set[int] = set()

    def register(self, opt: torch.optim.Optimizer) -> None:
        if opt not in self._index:
            self._index[opt] = len(self._optimizers)
            self._optimizers.append(weakref.ref(opt))

    def index(self, opt: torch.optim.Optimizer) -> Optional[int]:
        return self._index.get(opt)

    def live_optimizers(self) -> list[torch.optim.Optimizer]:
        return [opt for opt in (ref() for ref in self._optimizers) if opt is not None]

    def grew(self, opt: torch.optim.Optimizer) -> bool:
        """``opt`` has parameters not traced yet (made, or given some, after the first step)."""
        return self._traced.get(opt) != _count(opt)

    def add_optimizers(self) -> bool:
        """Trace the parameters of every live optimizer not traced yet; whether there were."""
        new: list[tuple[int, str, torch.Tensor]] = []
        groups: dict[int, set[int]] = {}
        for opt in self.live_optimizers():
            index = self._index[opt]
            groups[index] = {id(p) for g in opt.param_groups for p in g["params"]}
            for g, group in enumerate(opt.param_groups):
                for j, p in enumerate(group["params"]):
                    if id(p) not in self._ids:
                        self._ids.add(id(p))
                        new.append((index, f"opt{index}.group{g}.{j}", p))
            self._traced[opt] = _count(opt)
        if new:
            self.names += self.naming.name_tensors(new, groups)
            self.params += [p for _, _, p in new]
        return bool(new)

    def add_leaves(self, tensors: Any) -> None:
        """Backward counting: the tensors the first backward pass trains, in model order."""
        leaves = [t for t in graph_leaves(tensors) if t.requires_grad]
        new = [(None, f"leaf{i}", p) for i, p in enumerate(leaves)]
        names = self.naming.name_tensors(new, {})
        order: dict[int, int] = {}
        for root, _ in self.naming.roots:
            for q in root.parameters():
                order.setdefault(id(q), len(order))
        ranked = sorted(range(len(new)), key=lambda i: (order.get(id(leaves[i]), len(order)), i))
        self.params = [leaves[i] for i in ranked]
        self.names = [names[i] for i in ranked]
        self._ids = {id(p) for p in self.params}

    def optimizers_header(self) -> list[dict[str, Any]]:
        """The ``params`` record's ``optimizers``: each live one's index, class and tensors."""
        optimizers = []
        for opt in self.live_optimizers():
            ids = {id(p) for g in opt.param_groups for p in g["params"]}
            optimizers.append({"index": self._index[opt], "class": type(opt).__name__,
                               "params": [n for n, p in zip(self.names, self.params) if id(p) in ids]})
        return optimizers
