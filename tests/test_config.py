"""``[tool.audit]``: finding the file, checking every key, resolving paths.

Property tests: any unknown key or wrongly typed value anywhere gives one ``ConfigError`` line
naming the file, the table and the key; any valid table round-trips through TOML text.
"""
from __future__ import annotations

import json
import os
import re
import sys

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from audit import config, registry
from audit.config import Config, ConfigError
from audit.settings import load_config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: The audits whose tables these tests generate; every registered kind's table is known.
AUDITS = ("determinism", "init")
DEFAULT_TOLERANCES = {kind.name: dict(kind.tolerances) for kind in registry.KINDS}


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Every test starts in an empty folder, far from the repository's own pyproject.toml."""
    monkeypatch.chdir(tmp_path)


def write(folder, text: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pyproject.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


# --------------------------------------------------------------------------- a tiny TOML writer


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _string(key)


def _string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def toml_dumps(table: dict) -> str:
    """``table`` as ``[tool.audit]`` (sub-tables of audits as their own sections)."""
    lines = ["[tool.audit]"]
    subs = {}
    for key, value in table.items():
        if key in AUDITS and isinstance(value, dict):
            subs[key] = value
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    for name, sub in subs.items():
        lines.append(f"[tool.audit.{name}]")
        lines += [f"{_key(k)} = {_value(v)}" for k, v in sub.items()]
    return "\n".join(lines) + "\n"


def parse_text(text: str, path: str = "/project/pyproject.toml") -> Config:
    return config.parse(tomllib.loads(text)["tool"]["audit"], path, registry.tables())


# --------------------------------------------------------------------------- finding the file


def test_no_pyproject_gives_an_empty_config(tmp_path):
    cfg = load_config()
    assert cfg.path is None and cfg.common == {} and cfg.audits == []
    assert cfg.section("determinism") == {} and cfg.section("init") == {}


def test_nearest_pyproject_walking_up(tmp_path, monkeypatch):
    path = write(tmp_path, '[tool.audit]\nseed = 3\n[tool.audit.init]\nsteps = 2\n')
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    cfg = load_config()
    assert cfg.path == os.path.abspath(path)
    assert cfg.common == {"seed": 3}
    assert cfg.section("init") == {"steps": 2}
    assert load_config(start=str(tmp_path / "a")).path == cfg.path


def test_walk_stops_at_the_nearest_pyproject_even_without_a_table(tmp_path, monkeypatch):
    write(tmp_path, "[tool.audit]\nseed = 3\n")
    inner = write(tmp_path / "sub", "[project]\nname = 'x'\n")
    monkeypatch.chdir(os.path.dirname(inner))
    cfg = load_config()
    assert cfg.path is None and cfg.common == {}


def test_explicit_config_file(tmp_path):
    other = tmp_path / "ci" / "audit.toml"
    other.parent.mkdir()
    other.write_text("[tool.audit]\nseed = 7\n", encoding="utf-8")
    cfg = load_config(str(other))
    assert cfg.common == {"seed": 7} and cfg.path == str(other)


def test_explicit_config_that_is_missing_or_has_no_table(tmp_path):
    with pytest.raises(ConfigError, match=r"--config nope\.toml: no such file"):
        load_config("nope.toml")
    (tmp_path / "x.toml").write_text("[tool.other]\na = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"x\.toml: no \[tool\.audit\] table"):
        load_config("x.toml")


def test_invalid_toml_is_one_line(tmp_path):
    write(tmp_path, "[tool.audit\nseed = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config()
    message = str(info.value)
    assert message.startswith("pyproject.toml: not valid TOML") and "\n" not in message


# --------------------------------------------------------------------------- values and paths


def test_the_documented_error_line(tmp_path):
    write(tmp_path, '[tool.audit.init]\nsteps = "ten"\n')
    with pytest.raises(ConfigError) as info:
        load_config()
    assert str(info.value) == ("pyproject.toml: [tool.audit.init] steps must be a positive "
                               "integer, got 'ten' (a string)")


def test_unknown_key_lists_the_known_ones(tmp_path):
    write(tmp_path, "[tool.audit.determinism]\nstep = 3\n")
    with pytest.raises(ConfigError) as info:
        load_config()
    assert str(info.value) == ("pyproject.toml: [tool.audit.determinism] unknown key 'step'; "
                               "expected one of: attribution, cuda_ops, jobs, latent, nproc, runs, steps, tolerances")


def test_relative_target_and_paths_are_relative_to_the_pyproject(tmp_path, monkeypatch):
    write(tmp_path, '[tool.audit]\ntarget = "src/train.py:build"\nout = "reports"\n'
                    'baseline = "ci/base.json"\n')
    sub = tmp_path / "src"
    sub.mkdir()
    monkeypatch.chdir(sub)
    cfg = load_config()
    where, _, name = cfg.common["target"].rpartition(":")
    assert name == "build"
    assert os.path.abspath(where) == str(tmp_path / "src" / "train.py")
    assert os.path.abspath(cfg.common["out"]) == str(tmp_path / "reports")
    assert os.path.abspath(cfg.baseline) == str(tmp_path / "ci" / "base.json")
    monkeypatch.chdir(tmp_path)
    cfg = load_config()
    assert cfg.common["target"] == "src/train.py:build"  # readable when run from the root
    assert cfg.common["out"] == "reports"


def test_module_target_is_kept(tmp_path):
    write(tmp_path, '[tool.audit]\ntarget = "pkg.models:build"\n')
    assert load_config().common["target"] == "pkg.models:build"


def test_schemes_audits_and_shapes_normalized(tmp_path):
    write(tmp_path, '[tool.audit]\naudits = "init"\ninput_shape = "3x8x8"\nnum_classes = 4\n'
                    '[tool.audit.init]\nschemes = "default, kaiming_normal,normal:0.02"\n'
                    'thresholds = {saturation_margin = 0.05}\n'
                    'tolerances = {grad_norm = 2}\n')
    cfg = load_config()
    assert cfg.audits == ["init"]
    assert cfg.common == {"input_shape": [3, 8, 8], "num_classes": 4}
    assert cfg.section("init") == {"schemes": ["default", "kaiming_normal", "normal:0.02"],
                                   "thresholds": {"saturation_margin": 0.05},
                                   "tolerances": {"grad_norm": 2.0}}
    assert cfg.tolerances("init") == {"grad_norm": 2.0}


@pytest.mark.parametrize("text, key", [
    ('[tool.audit.init]\nschemes = ["default", "he"]\n', "schemes"),
    ('[tool.audit.init]\nschemes = "normal:-1"\n', "schemes"),
    ('[tool.audit.init]\nthresholds = {bogus = 1}\n', "bogus"),
    ('[tool.audit.init]\nthresholds = {saturation_margin = "x"}\n', "saturation_margin"),
    ('[tool.audit.determinism]\nruns = 1\n', "runs"),
    ('[tool.audit.determinism]\nattribution = "yes"\n', "attribution"),
    ('[tool.audit.determinism]\ntolerances = {max_abs_diff = 0.5}\n', "max_abs_diff"),
    ('[tool.audit]\naudits = ["determinism", "lint"]\n', "audits"),
    ('[tool.audit]\naudits = []\n', "audits"),
    ('[tool.audit]\ndevice = "tpu"\n', "device"),
    ('[tool.audit]\nseed = -1\n', "seed"),
    ('[tool.audit]\ntarget = "train.py"\n', "target"),
    ('[tool.audit]\ninit = 3\n', "init"),
    ('[tool]\naudit = 3\n', "audit"),
])
def test_bad_values_name_the_key(tmp_path, text, key):
    write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config()
    message = str(info.value)
    assert message.startswith("pyproject.toml: [tool") and key in message and "\n" not in message


def test_an_unknown_audit_is_a_usage_error_naming_the_known_ones():
    from audit.probes.errors import UsageError

    with pytest.raises(UsageError, match="determinism"):
        registry.get("lint")


# --------------------------------------------------------------------------- property tests

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
IDENT = st.from_regex(r"[a-z][a-z0-9_]{0,7}", fullmatch=True)
MODULE_SPEC = st.builds(lambda parts, name: ".".join(parts) + ":" + name,
                        st.lists(IDENT, min_size=1, max_size=3), IDENT).filter(
                            lambda spec: not spec.split(":")[0].endswith(".py"))
POS = st.integers(1, 10_000)
NUMBER = st.one_of(st.integers(0, 1000), st.floats(0, 1e6, allow_nan=False))
SCHEME = st.one_of(st.sampled_from(["default", "kaiming_normal", "kaiming_uniform",
                                    "xavier_normal", "xavier_uniform", "orthogonal", "lsuv"]),
                   st.floats(1e-4, 10).map(lambda s: f"normal:{s:g}"))

VALID = {
    (): {
        "target": MODULE_SPEC,
        "seed": st.integers(0, 2**32 - 1),
        "device": st.sampled_from(["auto", "cpu", "cuda", "cuda:1"]),
        "out": st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_./-]{0,15}", fullmatch=True),
        "baseline": st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_./-]{0,15}", fullmatch=True),
        "audits": st.lists(st.sampled_from(AUDITS), min_size=1, max_size=2, unique=True),
        "input_shape": st.lists(POS, min_size=1, max_size=4),
        "num_classes": POS,
    },
    ("determinism",): {
        "runs": st.integers(2, 50), "steps": POS, "jobs": POS, "attribution": st.booleans(),
        "tolerances": st.fixed_dictionaries({}, optional={"max_abs_diff": st.floats(1, 1e6)}),
    },
    ("init",): {
        "steps": POS,
        "schemes": st.lists(SCHEME, min_size=1, max_size=4, unique=True),
        "tolerances": st.fixed_dictionaries(
            {}, optional={k: NUMBER for k in DEFAULT_TOLERANCES["init"]}),
    },
}

ANY = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False),
                st.booleans(), TEXT, st.lists(st.integers(-5, 5), max_size=3),
                st.dictionaries(IDENT, st.integers(), max_size=2))
NOT_INT = ANY.filter(lambda v: not (isinstance(v, int) and not isinstance(v, bool)))

#: For each key, values of the wrong type or out of range.
INVALID = {
    (): {
        "target": st.one_of(NOT_INT.filter(lambda v: not isinstance(v, str)),
                            IDENT, st.just(":x"), st.just("mod:")),
        "seed": st.one_of(NOT_INT, st.integers(max_value=-1), st.integers(min_value=2**32,
                                                                         max_value=2**62)),
        "device": st.one_of(NOT_INT.filter(lambda v: v not in ("auto", "cpu", "cuda")),
                            st.integers(), st.just("cuda:x")),
        "out": st.one_of(ANY.filter(lambda v: not isinstance(v, str)), st.just(""), st.just("  ")),
        "baseline": ANY.filter(lambda v: not isinstance(v, str)),
        "audits": st.one_of(st.integers(), st.just([]), st.just(["lint"]),
                            st.just(["init", "init"]), st.lists(st.integers(), min_size=1)),
        "input_shape": st.one_of(st.just([]), st.lists(st.integers(max_value=0), min_size=1),
                                 st.booleans(), st.floats(allow_nan=False), st.just("a,b")),
        "num_classes": st.one_of(NOT_INT, st.integers(max_value=0)),
        "determinism": ANY.filter(lambda v: not isinstance(v, dict)),
        "init": ANY.filter(lambda v: not isinstance(v, dict)),
    },
    ("determinism",): {
        "runs": st.one_of(NOT_INT, st.integers(max_value=1)),
        "steps": st.one_of(NOT_INT, st.integers(max_value=0)),
        "jobs": st.one_of(NOT_INT, st.integers(max_value=0)),
        "attribution": ANY.filter(lambda v: not isinstance(v, bool)),
        "tolerances": ANY.filter(lambda v: not isinstance(v, dict)),
    },
    ("init",): {
        "steps": st.one_of(NOT_INT, st.integers(max_value=0)),
        "schemes": st.one_of(st.integers(), st.booleans(), st.just([]), st.just("he"),
                             st.just(["default", 3]), st.just("normal:0")),
        "thresholds": ANY.filter(lambda v: not isinstance(v, dict)),
        "tolerances": ANY.filter(lambda v: not isinstance(v, dict)),
    },
}

KNOWN = {
    (): set(VALID[()]) | set(registry.names()),
    ("determinism",): set(VALID[("determinism",)]),
    ("init",): set(VALID[("init",)]) | {"thresholds"},
    ("determinism", "tolerances"): set(DEFAULT_TOLERANCES["determinism"]),
    ("init", "tolerances"): set(DEFAULT_TOLERANCES["init"]),
}


def _nest(where: tuple, key: str, value) -> dict:
    table = {key: value}
    for name in reversed(where):
        table = {name: table}
    return table


def _table_name(where: tuple) -> str:
    return "[" + ".".join(("tool", "audit") + where) + "]"


@st.composite
def valid_tables(draw):
    table = {}
    for where, keys in VALID.items():
        chosen = draw(st.fixed_dictionaries({}, optional=keys))
        if where:
            if chosen or draw(st.booleans()):
                table[where[0]] = chosen
        else:
            table.update(chosen)
    return table


@settings(max_examples=80, deadline=None)
@given(valid_tables())
def test_valid_tables_round_trip(table):
    root = "/project"
    cfg = parse_text(toml_dumps(table), os.path.join(root, "pyproject.toml"))
    common = {k: v for k, v in table.items() if k not in ("audits", "baseline", *AUDITS)}
    for key in ("out",):
        if key in common:
            assert os.path.abspath(cfg.common[key]) == os.path.normpath(os.path.join(root, common[key]))
            common[key] = cfg.common[key]
    assert cfg.common == common
    if "baseline" in table:
        assert os.path.abspath(cfg.baseline) == os.path.normpath(os.path.join(root, table["baseline"]))
    else:
        assert cfg.baseline is None
    assert cfg.audits == [a for a in registry.names() if a in table.get("audits", [])]
    for audit in AUDITS:
        expected = dict(table.get(audit, {}))
        if "tolerances" in expected:
            expected["tolerances"] = {k: float(v) for k, v in expected["tolerances"].items()}
        assert cfg.section(audit) == expected
    # Comma-separated strings mean the same as arrays.
    if "schemes" in table.get("init", {}):
        again = dict(table)
        again["init"] = {**table["init"], "schemes": ",".join(table["init"]["schemes"])}
        assert parse_text(toml_dumps(again)).section("init")["schemes"] == table["init"]["schemes"]


@st.composite
def invalid_values(draw):
    where = draw(st.sampled_from(list(INVALID)))
    key = draw(st.sampled_from(sorted(INVALID[where])))
    value = draw(INVALID[where][key])
    return where, key, value


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(valid_tables(), invalid_values())
def test_a_wrong_type_anywhere_names_the_key(table, bad):
    where, key, value = bad
    broken = _merge(table, _nest(where, key, value))
    with pytest.raises(ConfigError) as info:
        parse_text(toml_dumps(broken), "/project/pyproject.toml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("/project/pyproject.toml: ")
    assert f"{_table_name(where)} {key} must be" in message, message


@settings(max_examples=100, deadline=None)
@given(valid_tables(), st.sampled_from(sorted(KNOWN, key=len)), TEXT.filter(bool))
def test_an_unknown_key_anywhere_is_named(table, where, key):
    assume(key not in KNOWN[where])
    broken = _merge(table, _nest(where, key, 1))
    with pytest.raises(ConfigError) as info:
        parse_text(toml_dumps(broken))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("/project/pyproject.toml: ")
    assert f"{_table_name(where)} unknown key {key!r}" in message


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
