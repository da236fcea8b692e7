"""``[tool.audit]``: the settings a project keeps next to its code.

:func:`load` reads the ``[tool.audit]`` table of the nearest ``pyproject.toml`` (the first one
found walking up from the working folder; the walk stops there, so a parent project's settings
never leak in), or of the file ``--config`` names. Every key is checked: an unknown key or a
value of the wrong type raises :class:`ConfigError` with one line naming the file, the table,
the key and what is expected. The common keys are checked here; each ``[tool.audit.<audit>]``
table by its audit kind (``tables``: audit name -> checker). The reference of every key is in
the README ("Configuration").
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, NoReturn, Optional

from audit.probes.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

FILENAME = "pyproject.toml"

#: A ``[tool.audit.<audit>]`` checker: (Checker, table) -> the checked settings.
TableChecker = Callable[["Checker", dict[str, Any]], dict[str, Any]]


@dataclass
class Config:
    """The checked ``[tool.audit]`` settings. Only keys the file sets are present."""

    path: Optional[str] = None  # the pyproject.toml read; None when there is none / no table
    common: dict[str, Any] = field(default_factory=dict)  # target, seed, device, out, input_shape, num_classes
    sections: dict[str, Any] = field(default_factory=dict)  # audit name -> checked dict
    audits: list[str] = field(default_factory=list)  # what `audit check` runs (empty: every audit)
    baseline: Optional[str] = None  # baseline file for `audit check`

    @property
    def root(self) -> Optional[str]:
        """The folder of the file read (what relative paths in it are relative to)."""
        return os.path.dirname(self.path) if self.path else None

    def section(self, audit: str) -> dict[str, Any]:
        """The options of ``[tool.audit.<audit>]`` that the file sets (a copy)."""
        return dict(self.sections.get(audit, {}))

    def tolerances(self, audit: str) -> dict[str, Any]:
        """The baseline tolerances the file sets for ``audit`` (no defaults filled in)."""
        return dict(self.sections.get(audit, {}).get("tolerances", {}))


# --------------------------------------------------------------------------- describing values


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"  # TOML dates and times


def _show(value: Any) -> str:
    """The value as the user wrote it (roughly), on one line and short, with its type."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, dict):
        text = "{" + ", ".join(f"{k} = {_show_bare(v)}" for k, v in value.items()) + "}"
    else:
        text = _show_bare(value)
    text = " ".join(text.split())
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({_type_name(value)})"


def _show_bare(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_show_bare(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{...}"
    return repr(value)


def _display_path(path: str) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return path
    return path if rel.startswith("..") else rel


class Checker:
    """Builds the one-line errors for one file."""

    def __init__(self, path: str):
        self.file = _display_path(path)

    def fail(self, table: str, key: str, expected: str, value: Any = None, *, got: bool = True) -> NoReturn:
        where = f"[{table}] {key}"
        message = f"{self.file}: {where} must be {expected}"
        if got:
            message += f", got {_show(value)}"
        raise ConfigError(message)

    def unknown(self, table: str, key: str, known: Iterable[str]) -> NoReturn:
        raise ConfigError(f"{self.file}: [{table}] unknown key {key!r}; expected one of: "
                          f"{', '.join(sorted(known))}")


# --------------------------------------------------------------------------- value checks


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(float(value)))


def positive_int(minimum: int = 1) -> tuple[Callable[..., Any], str]:
    text = "a positive integer" if minimum == 1 else f"an integer of {minimum} or more"
    return (lambda v: is_int(v) and v >= minimum), text


def string_list(value: Any) -> Optional[list[Any]]:
    """A TOML array of strings or a comma-separated string, as a list; None if neither."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value]
    return None


def _is_target_spec(value: str) -> bool:
    from audit.probes.run.target import TargetError, parse_spec  # light: torch only when loading

    try:
        parse_spec(value)
    except TargetError:
        return False
    return True


def _is_file_spec(where: str) -> bool:
    return where.endswith(".py") or "/" in where or os.sep in where


def _resolve_path(root: str, path: str) -> str:
    """``path`` (relative to ``root``) as a path usable from the working folder: relative when
    it lies under it, absolute otherwise."""
    expanded = os.path.expanduser(path)
    full = expanded if os.path.isabs(expanded) else os.path.normpath(os.path.join(root, expanded))
    return _display_path(full)


# --------------------------------------------------------------------------- the tables

def parse_shape(value: Any) -> Optional[list[Any]]:
    """A per-sample shape from ``[3, 32, 32]``, ``"3,32,32"`` or ``"3x32x32"``; None if it is
    not one (every part a positive integer, no empty part)."""
    if isinstance(value, str):
        parts = "".join(value.split()).replace("x", ",").split(",")
        if not all(p.isdigit() for p in parts):
            return None
        value = [int(p) for p in parts]
    if isinstance(value, list) and value and all(is_int(v) and v > 0 for v in value):
        return list(value)
    return None


def _target(chk: Checker, value: Any, root: str) -> str:
    if not isinstance(value, str) or not _is_target_spec(value.strip()):
        chk.fail("tool.audit", "target", "a string 'path/to/file.py:NAME' or 'package.module:NAME'",
                 value)
    where = value.strip().partition(",")[0].rpartition(":")[0]
    rest = value.strip()[len(where):]
    return (_resolve_path(root, where) if _is_file_spec(where) else where) + rest


def _path(chk: Checker, key: str, value: Any, root: str) -> str:
    if not isinstance(value, str) or not value.strip():
        chk.fail("tool.audit", key, "a path (a non-empty string)", value)
    return _resolve_path(root, value.strip())


def _audits(chk: Checker, value: Any, names: tuple[str, ...]) -> list[str]:
    listed = string_list(value)
    if not listed or any(n not in names for n in listed) or len(set(listed)) != len(listed):
        chk.fail("tool.audit", "audits", "a non-empty array of audit names from "
                 + ", ".join(f"'{n}'" for n in names) + " (or a comma-separated string)", value)
    return [a for a in names if a in listed]


def _device_ok(value: Any) -> bool:
    return isinstance(value, str) and (value in ("auto", "cpu", "cuda") or (
        value.startswith("cuda:") and value[5:].isdigit()))


#: The common keys checked by a rule: (test, what is expected).
_COMMON_RULES = {
    "seed": ((lambda v: is_int(v) and 0 <= v < 2**32), "an integer from 0 to 4294967295"),
    "device": (_device_ok, "one of 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    "num_classes": ((lambda v: is_int(v) and v >= 1), "a positive integer"),
    "input_shape": ((lambda v: parse_shape(v) is not None),
                    "an array of positive integers like [3, 32, 32]"),
    "timeout": ((lambda v: is_number(v) and v > 0), "a positive number of seconds"),
    "executor": ((lambda v: v in ("local", "ray")), "'local' or 'ray'"),
    "ray_address": ((lambda v: isinstance(v, str) and bool(v.strip())),
                    "a Ray address: 'auto', 'ray://HOST:PORT' or a cluster's HOST:PORT"),
}


def _check_common(chk: Checker, table: dict[str, Any], root: str,
                  names: tuple[Any, ...]) -> tuple[dict[str, Any], list[Any], Optional[str]]:
    common: dict[str, Any] = {}
    audits: list[str] = []
    baseline = None
    known = {"target", "out", "audits", "baseline", *_COMMON_RULES, *names}
    for key, value in table.items():
        if key not in known:
            chk.unknown("tool.audit", key, known)
        if key in _COMMON_RULES:
            test, expected = _COMMON_RULES[key]
            if not test(value):
                chk.fail("tool.audit", key, expected, value)
            common[key] = (parse_shape(value) if key == "input_shape"
                           else float(value) if key == "timeout" else value)
        elif key == "target":
            common[key] = _target(chk, value, root)
        elif key == "out":
            common[key] = _path(chk, key, value, root)
        elif key == "baseline":
            baseline = _path(chk, key, value, root)
        elif key == "audits":
            audits = _audits(chk, value, names)
        elif not isinstance(value, dict):  # an audit's table
            chk.fail("tool.audit", key, f"a table ([tool.audit.{key}])", value)
    return common, audits, baseline


def check_tolerances(chk: Checker, audit: str, value: Any, defaults: dict[str, Any],
                     minimums: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """A ``tolerances`` table: known keys only, each a number of at least its minimum (0)."""
    table = f"tool.audit.{audit}.tolerances"
    if not isinstance(value, dict):
        chk.fail(f"tool.audit.{audit}", "tolerances", "a table of per-metric tolerances", value)
    out = {}
    for key, tol in value.items():
        if key not in defaults:
            chk.unknown(table, key, defaults)
        least = (minimums or {}).get(key, 0)
        if not is_number(tol) or tol < least:
            chk.fail(table, key, "a non-negative number" if not least else
                     f"a number of {least:g} or more", tol)
        out[key] = float(tol)
    return out


# --------------------------------------------------------------------------- loading


def find_pyproject(start: Optional[str] = None) -> Optional[str]:
    """The nearest ``pyproject.toml`` at or above ``start`` (default: the working folder)."""
    folder = os.path.abspath(start or os.getcwd())
    while True:
        candidate = os.path.join(folder, FILENAME)
        if os.path.isfile(candidate):
            return candidate
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def _read(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{_display_path(path)}: not valid TOML: {' '.join(str(exc).split())}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{_display_path(path)}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{_display_path(path)}: cannot read it: {exc.strerror or exc}") from None


def parse(table: dict[str, Any], path: str, tables: dict[str, Any]) -> Config:
    """Check a ``[tool.audit]`` table read from ``path`` (``tables``: each audit's checker)
    and return the :class:`Config`."""
    chk = Checker(path)
    if not isinstance(table, dict):
        chk.fail("tool", "audit", "a table ([tool.audit])", table)
    root = os.path.dirname(os.path.abspath(path))
    common, audits, baseline = _check_common(chk, table, root, tuple(tables))
    sections = {name: check(chk, table[name]) for name, check in tables.items() if name in table}
    return Config(path=os.path.abspath(path), common=common, sections=sections,
                  audits=audits, baseline=baseline)


def load(tables: dict[str, Any], path: Optional[str] = None, start: Optional[str] = None) -> Config:
    """The ``[tool.audit]`` settings.

    ``path`` (``--config``) names the file to read; it must exist and hold ``[tool.audit]``.
    Without it, the nearest ``pyproject.toml`` at or above ``start`` (default: the working
    folder) is read, and a missing file or table gives an empty :class:`Config` (``path`` None).
    """
    if path is not None:
        if not os.path.isfile(path):
            raise ConfigError(f"--config {path}: no such file; name a pyproject.toml")
        data = _read(path)
        table = data.get("tool", {}).get("audit") if isinstance(data.get("tool"), dict) else None
        if table is None:
            raise ConfigError(f"{_display_path(path)}: no [tool.audit] table; add one or leave out --config")
        return parse(table, path, tables)
    found = find_pyproject(start)
    if found is None:
        return Config()
    data = _read(found)
    tool = data.get("tool")
    if not isinstance(tool, dict) or "audit" not in tool:
        return Config()
    return parse(tool["audit"], found, tables)


#: A rule for one key of an audit's table: (test(value) -> bool, what is expected).
Rule = tuple[Callable[[Any], bool], str]


def check_table(chk: Checker, audit: str, table: dict[str, Any], rules: dict[str, Any],
                special: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Check ``[tool.audit.<audit>]`` against ``rules`` (key -> (test, expected)); keys in
    ``special`` are checked by their own function (chk, value) -> value."""
    name = f"tool.audit.{audit}"
    special = special or {}
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key in special:
            out[key] = special[key](chk, value)
            continue
        if key not in rules:
            chk.unknown(name, key, set(rules) | set(special))
        test, expected = rules[key]
        if not test(value):
            chk.fail(name, key, expected, value)
        out[key] = value
    return out


def boolean() -> Rule:
    return (lambda v: isinstance(v, bool)), "true or false"
