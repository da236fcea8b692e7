"""Matching two versions' modules across renames and regrouping.

Leaf modules are aligned in creation order (``named_modules`` order) by their signature: type
and the shapes of their own parameters. The longest common subsequence pairs up (a rename);
in a stretch that differs, modules pair up by position when the stretch has the same length
on both sides and the parameter shapes agree (a type change: GELU for ReLU); the rest have no
counterpart (a ``Flatten`` dropped for ``.flatten(1)``). A container pairs with the one on the
other side that holds exactly its paired leaves' partners; the roots always pair.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass(frozen=True)
class ModuleInfo:
    name: str
    type: str
    shapes: tuple[Any, ...]  # the shapes of the module's own parameters, in order
    leaf: bool


@dataclass
class Matching:
    """Side a's names -> side b's, for modules and parameters."""

    modules: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    renamed: list[Any] = field(default_factory=list)  # [(a, b)] in b's order
    replaced: list[Any] = field(default_factory=list)  # [(a, b, a_type, b_type)]
    unmatched_a: list[Any] = field(default_factory=list)
    unmatched_b: list[Any] = field(default_factory=list)
    params_a: list[Any] = field(default_factory=list)  # a's parameter names without a partner

    def module_a(self, b_name: Optional[str]) -> Optional[str]:
        """Side a's name for side b's module (None when it has no partner)."""
        return next((a for a, b in self.modules.items() if b == b_name), None)

    def param_a(self, b_name: Optional[str]) -> Optional[str]:
        return next((a for a, b in self.params.items() if b == b_name), None)


def _owner(param: str) -> str:
    return param.rpartition(".")[0]


def modules_of(header: dict[str, Any]) -> list[Any]:
    """The modules a trace's ``params`` header names, with type and own parameter shapes."""
    names = list(header.get("modules") or [])
    types = list(header.get("types") or ["?"] * len(names))
    own: dict[str, Any] = {}
    for param, shape in zip(header.get("names") or [], header.get("shapes") or []):
        own.setdefault(_owner(param), []).append(tuple(shape))
    infos = []
    for name, kind in zip(names, types):
        inner = any(other != name and (name == "" or other.startswith(name + ".")) for other in names)
        infos.append(ModuleInfo(name, kind, tuple(own.get(name, ())), leaf=not inner))
    return infos


def _own_params(header: dict[str, Any], module: str) -> list[Any]:
    return [(p, tuple(s)) for p, s in zip(header.get("names") or [], header.get("shapes") or [])
            if _owner(p) == module]


def _common(sig_a: list[Any], sig_b: list[Any]) -> list[Any]:
    """The longest common subsequence of two signature lists, as index pairs in order
    (dynamic programming: every aligned pair keeps creation order on both sides)."""
    n, k = len(sig_a), len(sig_b)
    length = [[0] * (k + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        row, below = length[i], length[i + 1]
        for j in range(k - 1, -1, -1):
            row[j] = below[j + 1] + 1 if sig_a[i] == sig_b[j] else max(below[j], row[j + 1])
    pairs, i, j = [], 0, 0
    while i < n and j < k:
        if sig_a[i] == sig_b[j]:
            pairs.append((i, j))
            i, j = i + 1, j + 1
        elif length[i + 1][j] >= length[i][j + 1]:
            i += 1
        else:
            j += 1
    return pairs


def _pair_stretch(xs: list[Any], ys: list[Any], m: Matching) -> None:
    """Between two aligned pairs: same length, same parameter shapes -> a type change."""
    if len(xs) != len(ys):
        return
    for x, y in zip(xs, ys):
        if x.shapes == y.shapes:
            m.modules[x.name] = y.name
            m.replaced.append((x.name, y.name, x.type, y.type))


def _pair_leaves(la: list[Any], lb: list[Any], m: Matching) -> None:
    pairs = _common([(x.type, x.shapes) for x in la], [(y.type, y.shapes) for y in lb])
    prev_i = prev_j = 0
    for i, j in pairs + [(len(la), len(lb))]:
        _pair_stretch(la[prev_i:i], lb[prev_j:j], m)
        if i < len(la):
            m.modules[la[i].name] = lb[j].name
        prev_i, prev_j = i + 1, j + 1


def _pair_containers(ia: list[Any], ib: list[Any], m: Matching) -> None:
    def leaves_under(infos: list[Any], name: str) -> list[Any]:
        return [x.name for x in infos if x.leaf and (name == "" or x.name.startswith(name + "."))]

    paired = set(m.modules.values())
    # paired leaf set -> b's containers holding exactly it, outermost first
    by_leaves: dict[frozenset[str], list[Any]] = {}
    for y in ib:
        if not y.leaf:
            by_leaves.setdefault(frozenset(n for n in leaves_under(ib, y.name) if n in paired), []).append(y)
    for x in ia:
        if x.leaf:
            continue
        under = frozenset(m.modules[n] for n in leaves_under(ia, x.name) if n in m.modules)
        if x.name == "" and any(y.name == "" for y in ib):
            m.modules[""] = ""
        elif under:
            taken = set(m.modules.values())
            free = [y for y in by_leaves.get(under, []) if y.name not in taken]
            # the one of the same type, else the innermost
            partner = next((y for y in free if y.type == x.type), free[-1] if free else None)
            if partner is not None:
                m.modules[x.name] = partner.name


def match(header_a: dict[str, Any], header_b: dict[str, Any]) -> Matching:
    """Pair side a's modules and parameters with side b's."""
    ia, ib = modules_of(header_a), modules_of(header_b)
    m = Matching()
    _pair_leaves([x for x in ia if x.leaf], [y for y in ib if y.leaf], m)
    _pair_containers(ia, ib, m)
    m.unmatched_a = [x.name for x in ia if x.name not in m.modules]
    taken = set(m.modules.values())
    m.unmatched_b = [y.name for y in ib if y.name not in taken]
    for a_mod, b_mod in m.modules.items():
        own_b = _own_params(header_b, b_mod)
        for k, (p, shape) in enumerate(_own_params(header_a, a_mod)):
            if k < len(own_b) and own_b[k][1] == shape:
                m.params[p] = own_b[k][0]
    b_order = {y.name: i for i, y in enumerate(ib)}
    m.renamed = sorted(((a, b) for a, b in m.modules.items() if a != b), key=lambda r: b_order[r[1]])
    m.params_a = [p for p in header_a.get("names") or [] if p not in m.params]
    return m
