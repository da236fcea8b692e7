"""What a baseline file's snapshots must hold, checked when the file is read (before any run).

A file with the right schema tag but a snapshot of the wrong shape (hand-edited, merged badly)
would otherwise fail only when it is compared, after the whole audit, as an internal error.
:func:`baseline_problem` names the first field that is wrong; missing fields are allowed
(older files), unknown ones ignored.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _string(v: Any) -> bool:
    return isinstance(v, str)


def _boolean(v: Any) -> bool:
    return isinstance(v, bool)


def _numbers(v: Any) -> bool:
    return isinstance(v, dict) and all(_number(x) for x in v.values())


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _optional(test: Callable) -> Callable:
    return lambda v: v is None or test(v)


def _table(fields: dict) -> Callable:
    """A table whose listed fields, where present, pass their tests."""
    return lambda v: isinstance(v, dict) and all(test(v[k]) for k, test in fields.items() if k in v)


def _records(fields: dict) -> Callable:
    """A list of such tables."""
    return lambda v: isinstance(v, list) and all(_table(fields)(x) for x in v)


def _layers(v: Any) -> bool:
    return isinstance(v, dict) and all(_LAYER(x) for x in v.values())


_STR, _OPT_STR, _OPT_NUM, _BOOL = _string, _optional(_string), _optional(_number), _boolean
_NUMBERS = _numbers
_LAYER = _table({"grad_norm": _OPT_NUM, "act_std": _OPT_NUM, "dead_fraction": _OPT_NUM,
                 "saturated_fraction": _OPT_NUM, "nonfinite": _BOOL})
_COMMON = {
    "settings": (lambda v: isinstance(v, dict), "a table"),
    "verdict": (_STR, "a string"),
    "failing_checks": (_str_list, "an array of check names"),
    "tolerances": (_NUMBERS, "a table of numbers"),
}
SNAPSHOT_RULES = {
    "determinism": {
        **_COMMON,
        "crashed": (_BOOL, "true or false"),
        "nondeterministic_stages": (_str_list, "an array of stage names"),
        "first_divergence": (_optional(_table({"step": _optional(_number),
                                                "stage": _STR, "module": _OPT_STR,
                                                "max_abs_diff": _OPT_NUM})),
                             "null or a table with step, stage, module, max_abs_diff"),
        "cause_sources": (_str_list, "an array of cause sources"),
        "rng_escapes": (_records({"kind": _STR, "where": _OPT_STR}),
                        "an array of tables with kind and where"),
    },
    "init": {
        **_COMMON,
        "error": (_OPT_STR, "null or a string"),
        "recommended": (_OPT_STR, "null or a scheme name"),
        "recommended_healthy": (_BOOL, "true or false"),
        "findings": (_records({"kind": _STR, "layer": _OPT_STR}),
                     "an array of tables with kind and layer"),
        "layers": (_layers, "a table of layers, each with numbers (or null) and nonfinite "
                            "true/false"),
    },
}


def baseline_problem(doc: dict) -> Optional[str]:
    """The first thing wrong with the snapshots of a baseline document (None: nothing)."""
    for audit, rules in SNAPSHOT_RULES.items():
        if audit not in doc:
            continue
        section = doc[audit]
        if not isinstance(section, dict):
            return f"its {audit} snapshot is not a table"
        for key, (test, expected) in rules.items():
            if key in section and not test(section[key]):
                return f"{audit}.{key} must be {expected}"
    return None
