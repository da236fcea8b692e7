"""The shape of the house: every audit kind provides everything the registry promises, and
imports (module level and inside functions, read with ``ast``) run one way with no cycles:
face -> gate -> engines -> result model; reports -> result model."""
from __future__ import annotations

import ast
import re
import dataclasses
import pathlib

import pytest

from audit import config, registry
from audit.kinds.base import AuditKind, Settings

ROOT = pathlib.Path(__file__).resolve().parent.parent
#: Repository folder -> installed package.
FOLDERS = {"audit": "audit", "probes": "audit.probes", "reports": "audit.reports"}


def _modules() -> dict:
    out = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


MODULES = _modules()


def _resolve(name: str):
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: pathlib.Path) -> set:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            target = _resolve(name)
            if target and target != module and not module.startswith(target + "."):
                found.add(target)
    return found


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def layer(module: str) -> str:
    if module in ("audit.probes.errors",) or module.startswith("audit.probes.results"):
        return "results"
    if module.startswith("audit.probes"):
        return "engines"
    if module.startswith("audit.reports"):
        return "reports"
    if module.startswith(("audit.gate", "audit.kinds")) or module in (
            "audit.registry", "audit.settings", "audit.config"):
        return "gate"
    return "face"


#: Which layers each layer may import.
ALLOWED = {
    "results": {"results"},
    "engines": {"engines", "results"},
    "reports": {"reports", "results"},
    "gate": {"gate", "engines", "results", "reports"},
    "face": {"face", "gate", "engines", "results", "reports"},
}


def test_every_package_folder_is_installed():
    """A regular install (``pip install .``) ships only the packages pyproject.toml lists."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join([FOLDERS[path.relative_to(ROOT).parts[0]], *path.relative_to(ROOT).parts[1:-1]])
             for folder in FOLDERS for path in (ROOT / folder).rglob("__init__.py")}
    assert found == listed, f"not installed: {sorted(found - listed)}; listed, not there: {sorted(listed - found)}"


def test_the_module_map_sees_the_house():
    assert {"audit.cli", "audit.registry", "audit.probes.results", "audit.reports.html",
            "audit.probes.determinism.orchestrate", "audit.probes.init.engine",
            "audit.probes.run.launcher", "audit.probes.script.tracer", "audit.probes.child.worker"} <= set(MODULES)


def test_no_import_runs_against_the_flow():
    wrong = [f"{m} ({layer(m)}) imports {t} ({layer(t)})" for m, targets in GRAPH.items()
             for t in sorted(targets) if layer(t) not in ALLOWED[layer(m)]]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    state: dict = {}
    cycles = []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)



ENGINES = ("determinism", "init", "resume", "variance", "diff")
#: The rooms of probes/ and the rooms each may import: results <- run <- script <- engines <- child.
ROOMS = {
    "results": {"results"},
    "run": {"results", "run"},
    "script": {"results", "run", "script"},
    "engine": {"results", "run", "script"},  # and its own package
    "child": {"results", "run", "script", "engine", "child"},
}


def room(module: str) -> tuple:
    """(room, engine) of a probes module: ``("engine", "init")`` for audit.probes.init.*."""
    part = module.split(".")[2] if module.count(".") >= 2 else ""
    if part in ("results", "errors", "progress"):
        return "results", ""
    if part in ENGINES:
        return "engine", part
    return part, ""


def test_probes_has_rooms_and_no_loose_modules():
    loose = {m for m in MODULES if m.startswith("audit.probes.") and m.count(".") == 2
             and room(m)[0] not in ROOMS}
    assert not loose, f"modules of probes/ outside a room: {sorted(loose)}"


def test_imports_between_rooms_run_one_way_and_engines_never_import_each_other():
    wrong = []
    for module, targets in GRAPH.items():
        if not module.startswith("audit.probes."):
            continue
        (mine, engine) = room(module)
        for target in sorted(t for t in targets if t.startswith("audit.probes.")):
            (theirs, other) = room(target)
            same_engine = theirs == "engine" and other == engine
            if theirs not in ROOMS[mine] and not same_engine:
                wrong.append(f"{module} ({mine} {engine}) imports {target} ({theirs} {other})")
    assert not wrong, "\n".join(wrong)


def test_the_room_rules_see_a_wrong_import():
    assert room("audit.probes.diff.engine") == ("engine", "diff")
    assert "engine" not in ROOMS["run"] and "child" not in ROOMS["engine"]
    assert room("audit.probes.run.launcher")[0] == "run" and room("audit.probes.errors")[0] == "results"

# --------------------------------------------------------------------------- the registry


@pytest.mark.parametrize("kind", registry.KINDS, ids=lambda k: k.name)
def test_every_kind_provides_everything(kind: AuditKind):
    for f in dataclasses.fields(AuditKind):
        value = getattr(kind, f.name)
        assert value is not None, f.name
        if f.type.startswith("Callable"):
            assert callable(value), f.name
    assert issubclass(kind.settings, Settings) and dataclasses.is_dataclass(kind.result_type)
    defaults = kind.settings()  # every setting has a default
    assert defaults.out and isinstance(defaults.seed, int)
    assert kind.check_table(config.Checker("pyproject.toml"), {}) == {}
    assert all(isinstance(v, float) for v in kind.tolerances.values())
    assert registry.get(kind.name) is kind


def test_kind_names_are_unique_and_commands_exist():
    from audit.cli import build_parser

    names = registry.names()
    assert len(set(names)) == len(names)
    commands = build_parser()._subparsers._group_actions[0].choices
    assert set(names) | {"check"} == set(commands)


def test_no_audit_name_is_switched_on_outside_its_kind():
    """Only the kinds and the registry may compare against an audit's name."""
    offenders = []
    for module, path in MODULES.items():
        if layer(module) not in ("gate", "face") or module.startswith("audit.kinds"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and any(
                    isinstance(c, ast.Constant) and c.value in registry.names()
                    for c in [node.left, *node.comparators]):
                offenders.append(f"{module}:{node.lineno}")
    assert not offenders, offenders


# --------------------------------------------------------------------------- private names


def _module_bindings(module: str, tree: ast.AST) -> tuple:
    """(local name -> one of our modules, [``from x import _name`` places]) of one module."""
    bound, private = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in MODULES and a.asname:
                    bound[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module in MODULES:
            for a in node.names:
                if f"{node.module}.{a.name}" in MODULES:
                    bound[a.asname or a.name] = f"{node.module}.{a.name}"
                elif _private(a.name) and node.module != module:
                    private.append(f"{module}:{node.lineno} imports {node.module}.{a.name}")
    return bound, private


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_private_name_is_used_outside_its_module():
    """``from x import _name`` and ``x._name`` across the modules of audit, probes, reports."""
    offenders = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        bound, private = _module_bindings(module, tree)
        offenders += private
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and _private(node.attr)
                    and isinstance(node.value, ast.Name) and node.value.id in bound
                    and bound[node.value.id] != module):
                offenders.append(f"{module}:{node.lineno} uses {bound[node.value.id]}.{node.attr}")
    assert not offenders, "\n".join(offenders)


def test_the_private_name_check_sees_both_forms():
    tree = ast.parse("from audit.probes.run import rng_escape as r\n"
                     "from audit.probes.run.processes import _FRAME\nr._state\n")
    bound, private = _module_bindings("audit.probes.run.knobs", tree)
    assert bound == {"r": "audit.probes.run.rng_escape"} and len(private) == 1


# --------------------------------------------------------------------------- short functions

#: The most lines a function of audit, probes or reports may take (its signature included).
MAX_FUNCTION_LINES = 60


def test_no_function_is_longer_than_the_limit():
    long = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{module}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "\n".join(long)


# ------------------------------------------------------------------ docstrings name what exists

#: ``:mod:`x```, ``:class:`x``` ... in a module's docstring, and ````audit.probes.x```` spelled out.
REFERENCE = re.compile(r":(?:mod|func|class|meth|data|attr):`~?([\w.]+)`|``((?:audit\.)?probes\.[\w.]+)``")


def _names(tree: ast.Module) -> set[str]:
    """What a module defines, imports or exports (``__all__``) at its top level, and
    ``Class.member`` of its classes."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        for n in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) else ():
            targets = n.targets if isinstance(n, ast.Assign) else [n.target] if isinstance(n, ast.AnnAssign) else []
            names.update(t.id for t in targets if isinstance(t, ast.Name))
            if isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in targets):
                names.update(ast.literal_eval(n.value))
        if isinstance(node, ast.ClassDef):
            inner = _names(ast.Module(body=node.body, type_ignores=[]))
            names.update(f"{node.name}.{n}" for n in inner)
    return names


def _defines(module: str) -> set[str]:
    return _names(ast.parse(MODULES[module].read_text(encoding="utf-8")))


def _exists(name: str) -> bool:
    """Whether a dotted name is a module of ours, or something one of them defines."""
    module = _resolve(name)
    return module is not None and (name == module or name[len(module) + 1:] in _defines(module))


def _reference_exists(name: str, module: str) -> bool:
    """Whether a docstring's reference is true; names outside the tool (``torch.``, ``os.``)
    are not checked."""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    name = "audit." + name if name.startswith("probes.") else name
    first = name.split(".")[0]
    if name.startswith("."):
        return _exists(package + name)
    if first == "audit":
        return _exists(name)
    if f"{package}.{first}" in MODULES:
        return _exists(f"{package}.{name}")
    if "." in name and not any(n.startswith(first + ".") for n in _defines(module)):
        return True  # not one of the module's classes: ``torch.nn.init``, ``os.replace``
    return _exists(f"{module}.{name}")


def _false_references(module: str, doc: str) -> list[str]:
    return [f"{module}: {a or b}" for a, b in REFERENCE.findall(doc)
            if not _reference_exists(a or b, module)]


def test_module_docstrings_name_modules_and_names_that_exist():
    wrong = []
    for module, path in MODULES.items():
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        wrong += _false_references(module, doc)
    assert not wrong, "\n".join(wrong)


def test_the_docstring_check_sees_a_moved_module():
    doc = "See :mod:`audit.probes.worker`, :class:`probes.flow.FlowProbe` and ``audit.probes.runs``."
    assert len(_false_references("audit.probes.run.trace", doc)) == 3
    good = "See :mod:`audit.probes.child.worker`, :class:`~audit.probes.init.flow.FlowProbe`, :func:`run_traced`."
    assert _false_references("audit.probes.run.trace", good) == []
