"""Tests of a baseline snapshot's fields, for the rules each kind gives its snapshot.

A kind's ``snapshot_rules`` map a field to ``(test, what it must be)``; :func:`snapshot_problem`
names the first field that is wrong. Missing fields are allowed (older files), unknown ones
ignored.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional


def number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def string(v: Any) -> bool:
    return isinstance(v, str)


def boolean(v: Any) -> bool:
    return isinstance(v, bool)


def numbers(v: Any) -> bool:
    return isinstance(v, dict) and all(number(x) for x in v.values())


def str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def optional(test: Callable[..., Any]) -> Callable[..., Any]:
    return lambda v: v is None or test(v)


def table(fields: dict[str, Any]) -> Callable[..., Any]:
    """A table whose listed fields, where present, pass their tests."""
    return lambda v: isinstance(v, dict) and all(test(v[k]) for k, test in fields.items() if k in v)


def records(fields: dict[str, Any]) -> Callable[..., Any]:
    """A list of such tables."""
    return lambda v: isinstance(v, list) and all(table(fields)(x) for x in v)


def tables(fields: dict[str, Any]) -> Callable[..., Any]:
    """A table of such tables (e.g. layers by name)."""
    return lambda v: isinstance(v, dict) and all(table(fields)(x) for x in v.values())


#: The fields every kind's snapshot has.
COMMON = {
    "settings": (lambda v: isinstance(v, dict), "a table"),
    "verdict": (string, "a string"),
    "failing_checks": (str_list, "an array of check names"),
    "tolerances": (numbers, "a table of numbers"),
}


def snapshot_problem(audit: str, section: Any, rules: Mapping[str, Any]) -> Optional[str]:
    """The first thing wrong with one audit's snapshot (None: nothing)."""
    if not isinstance(section, dict):
        return f"its {audit} snapshot is not a table"
    for key, (test, expected) in rules.items():
        if key in section and not test(section[key]):
            return f"{audit}.{key} must be {expected}"
    return None
