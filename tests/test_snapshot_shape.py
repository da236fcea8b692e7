"""Baseline snapshots are checked by their kind's rules when the file is read (before any run)."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit import registry
from audit.gate.baseline import BASELINE_SCHEMA, baseline_problem, read_baseline
from audit.probes.errors import UsageError

#: (audit, field, a wrong value, a right value)
CASES = [
    ("determinism", "crashed", "yes", False),
    ("determinism", "first_divergence", {"step": "one", "stage": "data"}, {"step": 1, "stage": "data"}),
    ("determinism", "rng_escapes", [{"kind": 3}], [{"kind": "random.seed", "where": None}]),
    ("init", "layers", {"fc": {"act_std": "big"}}, {"fc": {"act_std": 0.5, "nonfinite": False}}),
    ("init", "findings", [{"kind": "dead", "layer": 2}], [{"kind": "dead", "layer": "fc"}]),
    ("init", "tolerances", {"act_std": "x"}, {"act_std": 0.1}),
]


@pytest.mark.parametrize("audit,key,wrong,right", CASES)
def test_a_wrong_field_is_named_and_a_right_one_passes(tmp_path, audit, key, wrong, right):
    assert baseline_problem({audit: {key: right}}) is None
    problem = baseline_problem({audit: {key: wrong}})
    assert problem is not None and problem.startswith(f"{audit}.{key} ")
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps({"schema": BASELINE_SCHEMA, audit: {key: wrong}}))
    with pytest.raises(UsageError, match=f"{audit}.{key}"):
        read_baseline(str(path))


def test_a_snapshot_that_is_not_a_table_is_refused():
    assert baseline_problem({"init": [1, 2]}) is not None


def test_the_rules_live_with_their_kinds():
    ruled = {k.name for k in registry.KINDS if k.snapshot_rules}
    assert {"determinism", "init"} <= ruled


@settings(max_examples=30, deadline=None)
@given(verdict=st.text(max_size=8), failing=st.lists(st.text(max_size=8), max_size=3))
def test_common_fields_of_the_right_type_pass_in_every_ruled_kind(verdict, failing):
    for kind in registry.KINDS:
        if kind.snapshot_rules:
            doc = {kind.name: {"verdict": verdict, "failing_checks": failing, "settings": {}}}
            assert baseline_problem(doc) is None
