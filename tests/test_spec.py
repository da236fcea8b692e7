"""The parent-to-child run specs: one writer and one reader, nested specs kept, no torch."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.probes.run.spec import (DistSpec, LockstepSpec, ResumeSpec, RunSpec, SchemeRunSpec,
                               VarianceRunSpec, read_spec, write_spec)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

names = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
maybe_int = st.none() | st.integers(-10, 10_000)
lockstep = st.none() | st.builds(LockstepSpec, folder=names, role=st.sampled_from(["ref", "cmp"]),
                                  rename=st.none() | st.dictionaries(names, names, max_size=3))
resume = st.none() | st.builds(ResumeSpec, role=st.sampled_from(["a", "c"]), folder=names,
                               at=maybe_int, knobs=st.lists(names, max_size=3))
dist = st.none() | st.builds(DistSpec, nproc=st.integers(1, 8), timeout=st.floats(0.1, 1e4))
run_specs = st.builds(
    RunSpec, name=names, trace=names, steps=st.integers(0, 1000), seed=st.integers(0, 2**31),
    target=st.none() | names, input_shape=st.none() | st.lists(st.integers(1, 64), max_size=4),
    num_classes=maybe_int, knobs=st.lists(names, max_size=4), detail=st.booleans(),
    lockstep=lockstep, script=st.none() | st.lists(names, min_size=1, max_size=4),
    pin_sites=st.lists(names, max_size=3), stdin=st.sampled_from(["file", "terminal"]),
    jitter=st.booleans(), cuda_ops=st.booleans(), resume=resume, dist=dist)


@settings(max_examples=40, deadline=None)
@given(spec=run_specs)
def test_a_run_spec_reads_back_as_written(tmp_path_factory, spec):
    path = str(tmp_path_factory.mktemp("spec") / "run.json")
    write_spec(spec, path)
    back = read_spec(RunSpec, path)
    assert back == spec and back.spec_path == path
    for part, kind in (("lockstep", LockstepSpec), ("resume", ResumeSpec), ("dist", DistSpec)):
        assert getattr(back, part) is None or isinstance(getattr(back, part), kind)


def test_the_parents_rank_specs_are_not_written(tmp_path):
    rank = RunSpec(name="r0", trace="r0.trace", steps=2, dist=DistSpec(2, 30.0))
    spec = RunSpec(name="run", trace="t", steps=2, rank_specs=[rank])
    write_spec(spec, str(tmp_path / "s.json"))
    assert "rank_specs" not in json.loads((tmp_path / "s.json").read_text())
    assert read_spec(RunSpec, str(tmp_path / "s.json")).rank_specs == []


@pytest.mark.parametrize("spec", [
    VarianceRunSpec(seeds={"init": 1, "data": 2}, base_seed=0, steps=3, out="o.json"),
    SchemeRunSpec(scheme="kaiming", steps=2, result="r.json", saturation_margin=0.05),
])
def test_the_other_children_specs_read_back(tmp_path, spec):
    write_spec(spec, str(tmp_path / "s.json"))
    assert read_spec(type(spec), str(tmp_path / "s.json")) == spec


def test_an_unknown_key_is_refused(tmp_path):
    (tmp_path / "s.json").write_text(json.dumps({"name": "x", "trace": "t", "steps": 1, "typo": 1}))
    with pytest.raises(TypeError):
        read_spec(RunSpec, str(tmp_path / "s.json"))


def test_reading_a_spec_imports_no_torch():
    code = "import sys, audit.probes.run.spec; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         check=True).stdout
    assert out.strip() == "False"
