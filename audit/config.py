"""``[tool.audit]``: the settings a project keeps next to its code.

:func:`load` reads the ``[tool.audit]`` table of the nearest ``pyproject.toml`` (the first one
found walking up from the working folder; the walk stops there even if that file has no
``[tool.audit]`` table, so a parent project's settings never leak in), or of the file
``--config`` names. Every key is checked: an unknown key or a value of the wrong type raises
:class:`ConfigError` with one line naming the file, the table, the key and what is expected::

    pyproject.toml: [tool.audit.init] steps must be a positive integer, got 'ten' (a string)

The reference, every key with its type and default (``audit check`` runs the audits named in
``audits``; flags on the command line win over the file)::

    [tool.audit]
    target = "train.py:build"        # file.py:NAME (relative to this file's folder) or pkg.mod:NAME
    seed = 0                         # 0 <= seed < 2**32
    device = "auto"                  # auto | cpu | cuda | cuda:N
    out = "audit-report"             # report folder (relative to this file's folder)
    audits = ["determinism", "init"] # what `audit check` runs (list or "a,b"); default both
    baseline = "audit-baseline.json" # `audit check` compares with it (relative to this file's folder)
    input_shape = [3, 32, 32]        # per-sample input shape for a target that returns a bare module
    num_classes = 10                 # classes of the synthetic targets for a bare module
    timeout = 300                    # seconds a run may go without a training step

    [tool.audit.determinism]
    runs = 2                         # fresh processes to compare, 2 or more
    steps = 20                       # training steps per run
    jobs = 1                         # runs at once
    attribution = true               # knob reruns that prove the cause
    tolerances = { max_abs_diff = 10.0 }   # baseline: growth factor of the divergence allowed

    [tool.audit.init]
    steps = 5                        # optimizer steps per scheme
    schemes = ["default", "kaiming_normal"]   # or "default,kaiming_normal"; default: all built-in
    thresholds = { saturation_margin = 0.01 } # keys of probes.diagnose.DEFAULT_THRESHOLDS
    tolerances = { grad_norm = 1.0, act_std = 0.5, dead_fraction = 0.1, saturated_fraction = 0.1 }

This module imports neither torch nor the measuring code at load time; the threshold keys are
looked up (lazily) only when a ``thresholds`` table is present.
"""
from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

FILENAME = "pyproject.toml"
AUDITS = ("determinism", "init")

#: Baseline tolerances, per audit and metric, and what each means (README reference).
DEFAULT_TOLERANCES = {
    "determinism": {
        # The first divergence's max |diff| may grow by this factor over the baseline's.
        "max_abs_diff": 10.0,
    },
    "init": {
        # Decades (log10) a layer's gradient norm may move further away from the median layer's.
        "grad_norm": 1.0,
        # Decades a layer's activation std may move further away from 1.
        "act_std": 0.5,
        # Absolute increase allowed in a layer's share of dead ReLU units.
        "dead_fraction": 0.1,
        # Absolute increase allowed in a layer's share of saturated tanh/sigmoid units.
        "saturated_fraction": 0.1,
    },
}


class ConfigError(Exception):
    """A bad ``[tool.audit]`` table: one line naming the file, the key and what is expected."""


@dataclass
class Config:
    """The checked ``[tool.audit]`` settings. Only keys the file sets are present."""

    path: Optional[str] = None  # the pyproject.toml read; None when there is none / no table
    common: dict = field(default_factory=dict)  # target, seed, device, out, input_shape, num_classes
    sections: dict = field(default_factory=dict)  # "determinism" / "init" -> dict
    audits: list = field(default_factory=lambda: list(AUDITS))  # what `audit check` runs
    baseline: Optional[str] = None  # baseline file for `audit check`

    @property
    def root(self) -> Optional[str]:
        """The folder of the file read (what relative paths in it are relative to)."""
        return os.path.dirname(self.path) if self.path else None

    def section(self, audit: str) -> dict:
        """The options of ``[tool.audit.<audit>]`` that the file sets (a copy)."""
        if audit not in AUDITS:
            raise ValueError(f"unknown audit {audit!r}; expected one of {', '.join(AUDITS)}")
        return dict(self.sections.get(audit, {}))

    def tolerances(self, audit: str) -> dict:
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


class _Checker:
    """Builds the one-line errors for one file."""

    def __init__(self, path: str):
        self.file = _display_path(path)

    def fail(self, table: str, key: str, expected: str, value: Any = None, *, got: bool = True) -> None:
        where = f"[{table}] {key}"
        message = f"{self.file}: {where} must be {expected}"
        if got:
            message += f", got {_show(value)}"
        raise ConfigError(message)

    def unknown(self, table: str, key: str, known) -> None:
        raise ConfigError(f"{self.file}: [{table}] unknown key {key!r}; expected one of: "
                          f"{', '.join(sorted(known))}")


# --------------------------------------------------------------------------- value checks


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(float(value)))


def _positive_int(minimum: int = 1) -> tuple[Callable, str]:
    text = "a positive integer" if minimum == 1 else f"an integer of {minimum} or more"
    return (lambda v: _is_int(v) and v >= minimum), text


def _string_list(value: Any) -> Optional[list]:
    """A TOML array of strings or a comma-separated string, as a list; None if neither."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value]
    return None


def _scheme_problem(name: str) -> Optional[str]:
    from audit.probes.results import BUILTIN_SCHEMES

    if name in BUILTIN_SCHEMES:
        return None
    if name.startswith("normal:"):
        try:
            std = float(name.split(":", 1)[1])
        except ValueError:
            std = float("nan")
        return None if math.isfinite(std) and std > 0 else "normal:STD needs a positive STD"
    return "unknown scheme"


def _is_target_spec(value: str) -> bool:
    where, sep, name = value.rpartition(":")
    return bool(sep and where and name and name.replace(".", "_").isidentifier())


def _is_file_spec(where: str) -> bool:
    return where.endswith(".py") or "/" in where or os.sep in where


def _resolve_path(root: str, path: str) -> str:
    """``path`` (relative to ``root``) as a path usable from the working folder: relative when
    it lies under it, absolute otherwise."""
    expanded = os.path.expanduser(path)
    full = expanded if os.path.isabs(expanded) else os.path.normpath(os.path.join(root, expanded))
    return _display_path(full)


# --------------------------------------------------------------------------- the tables

_SCHEMES_EXPECTED = ("an array of scheme names or a comma-separated string of them "
                     "(default, kaiming_normal, kaiming_uniform, xavier_normal, xavier_uniform, "
                     "orthogonal, lsuv, normal:STD)")


def _check_common(chk: _Checker, table: dict, root: str) -> tuple[dict, list, Optional[str]]:
    name = "tool.audit"
    common: dict = {}
    audits = list(AUDITS)
    baseline = None
    known = {"target", "seed", "device", "out", "audits", "baseline", "input_shape",
             "num_classes", "timeout", "determinism", "init"}
    for key, value in table.items():
        if key not in known:
            chk.unknown(name, key, known)
        if key == "target":
            if not isinstance(value, str) or not _is_target_spec(value.strip()):
                chk.fail(name, key, "a string 'path/to/file.py:NAME' or 'package.module:NAME'", value)
            where, _, obj = value.strip().rpartition(":")
            if _is_file_spec(where):
                where = _resolve_path(root, where)
            common[key] = f"{where}:{obj}"
        elif key == "seed":
            if not _is_int(value) or not 0 <= value < 2**32:
                chk.fail(name, key, "an integer from 0 to 4294967295", value)
            common[key] = value
        elif key == "device":
            ok = isinstance(value, str) and (value in ("auto", "cpu", "cuda") or (
                value.startswith("cuda:") and value[5:].isdigit()))
            if not ok:
                chk.fail(name, key, "one of 'auto', 'cpu', 'cuda' or 'cuda:N'", value)
            common[key] = value
        elif key in ("out", "baseline"):
            if not isinstance(value, str) or not value.strip():
                chk.fail(name, key, "a path (a non-empty string)", value)
            resolved = _resolve_path(root, value.strip())
            if key == "out":
                common[key] = resolved
            else:
                baseline = resolved
        elif key == "audits":
            names = _string_list(value)
            expected = ("a non-empty array of audit names from 'determinism', 'init' "
                        "(or a comma-separated string)")
            if not names or any(n not in AUDITS for n in names) or len(set(names)) != len(names):
                chk.fail(name, key, expected, value)
            audits = [a for a in AUDITS if a in names]
        elif key == "input_shape":
            shape = value
            if isinstance(value, str):
                compact = "".join(value.split())
                shape = ([int(v) for v in re.split("[,x]", compact)]
                         if re.fullmatch(r"\d+(?:[,x]\d+)*", compact) else None)
            if (not isinstance(shape, list) or not shape
                    or not all(_is_int(v) and v > 0 for v in shape)):
                chk.fail(name, key, "an array of positive integers like [3, 32, 32]", value)
            common[key] = list(shape)
        elif key == "timeout":
            if not _is_number(value) or value <= 0:
                chk.fail(name, key, "a positive number of seconds", value)
            common[key] = float(value)
        elif key == "num_classes":
            if not _is_int(value) or value < 1:
                chk.fail(name, key, "a positive integer", value)
            common[key] = value
        elif key in AUDITS:
            if not isinstance(value, dict):
                chk.fail(name, key, f"a table ([tool.audit.{key}])", value)
    return common, audits, baseline


def _check_tolerances(chk: _Checker, audit: str, value: Any) -> dict:
    table = f"tool.audit.{audit}.tolerances"
    if not isinstance(value, dict):
        chk.fail(f"tool.audit.{audit}", "tolerances", "a table of per-metric tolerances", value)
    known = DEFAULT_TOLERANCES[audit]
    out = {}
    for key, tol in value.items():
        if key not in known:
            chk.unknown(table, key, known)
        if audit == "determinism" and key == "max_abs_diff":
            if not _is_number(tol) or tol < 1:
                chk.fail(table, key, "a number of 1 or more (the factor the divergence may grow by)", tol)
        elif not _is_number(tol) or tol < 0:
            chk.fail(table, key, "a non-negative number", tol)
        out[key] = float(tol)
    return out


def _check_determinism(chk: _Checker, table: dict) -> dict:
    name = "tool.audit.determinism"
    out: dict = {}
    rules = {"runs": _positive_int(2), "steps": _positive_int(), "jobs": _positive_int()}
    known = set(rules) | {"attribution", "tolerances"}
    for key, value in table.items():
        if key not in known:
            chk.unknown(name, key, known)
        if key in rules:
            test, expected = rules[key]
            if not test(value):
                chk.fail(name, key, expected, value)
            out[key] = value
        elif key == "attribution":
            if not isinstance(value, bool):
                chk.fail(name, key, "true or false", value)
            out[key] = value
        elif key == "tolerances":
            out[key] = _check_tolerances(chk, "determinism", value)
    return out


def _check_init(chk: _Checker, table: dict) -> dict:
    name = "tool.audit.init"
    out: dict = {}
    known = {"steps", "schemes", "thresholds", "tolerances"}
    for key, value in table.items():
        if key not in known:
            chk.unknown(name, key, known)
        if key == "steps":
            if not _is_int(value) or value < 1:
                chk.fail(name, key, "a positive integer", value)
            out[key] = value
        elif key == "schemes":
            names = _string_list(value)
            if not names:
                chk.fail(name, key, _SCHEMES_EXPECTED, value)
            for scheme in names:
                problem = _scheme_problem(scheme)
                if problem:
                    chk.fail(name, key, _SCHEMES_EXPECTED + f"; {scheme!r}: {problem}", value)
            out[key] = list(dict.fromkeys(names))
        elif key == "thresholds":
            out[key] = _check_thresholds(chk, value)
        elif key == "tolerances":
            out[key] = _check_tolerances(chk, "init", value)
    return out


def _threshold_keys() -> set:
    from audit.probes.init.diagnose import DEFAULT_THRESHOLDS  # lazy: numpy/scipy only when needed

    return set(DEFAULT_THRESHOLDS)


def _check_thresholds(chk: _Checker, value: Any) -> dict:
    table = "tool.audit.init.thresholds"
    if not isinstance(value, dict):
        chk.fail("tool.audit.init", "thresholds", "a table of diagnosis thresholds", value)
    if not value:
        return {}
    known = _threshold_keys()
    out = {}
    for key, limit in value.items():
        if key not in known:
            chk.unknown(table, key, known)
        if not _is_number(limit) or limit < 0:
            chk.fail(table, key, "a non-negative number", limit)
        out[key] = limit
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


def _read(path: str) -> dict:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{_display_path(path)}: not valid TOML: {' '.join(str(exc).split())}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{_display_path(path)}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{_display_path(path)}: cannot read it: {exc.strerror or exc}") from None


def parse(table: dict, path: str) -> Config:
    """Check a ``[tool.audit]`` table read from ``path`` and return the :class:`Config`."""
    chk = _Checker(path)
    if not isinstance(table, dict):
        chk.fail("tool", "audit", "a table ([tool.audit])", table)
    root = os.path.dirname(os.path.abspath(path))
    common, audits, baseline = _check_common(chk, table, root)
    sections = {}
    if "determinism" in table:
        sections["determinism"] = _check_determinism(chk, table["determinism"])
    if "init" in table:
        sections["init"] = _check_init(chk, table["init"])
    return Config(path=os.path.abspath(path), common=common, sections=sections,
                  audits=audits, baseline=baseline)


def load(path: Optional[str] = None, start: Optional[str] = None) -> Config:
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
        return parse(table, path)
    found = find_pyproject(start)
    if found is None:
        return Config()
    data = _read(found)
    tool = data.get("tool")
    if not isinstance(tool, dict) or "audit" not in tool:
        return Config()
    return parse(tool["audit"], found)
