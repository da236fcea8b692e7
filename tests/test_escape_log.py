"""The escape log has one writer: rng_escape's escapes and uses, the draw watch's draws and the
script tracer's unseeded globals all go through probes.run.escape_log.append, one JSON object a
line; read_log folds what every process wrote into one entry per kind and place."""
import json
import random

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from audit.probes.run import escape_log, rng_escape
from audit.probes.run.trace import rng_fingerprints
from audit.probes.script.draws import DrawWatch
from audit.probes.script.seeded import SeedWatch


def test_append_writes_one_json_object_a_line_and_creates_the_file(tmp_path):
    path = str(tmp_path / "escapes")
    escape_log.append(path, [])
    assert (tmp_path / "escapes").read_bytes() == b""
    lines = [{"kind": "k", "where": "a.py:1", "detail": "d", "pid": 1}, {"kind": "é", "where": None}]
    escape_log.append(path, lines[:1])
    escape_log.append(path, lines[1:])
    assert (tmp_path / "escapes").read_bytes() == "".join(json.dumps(x) + "\n" for x in lines).encode()


def test_every_writer_goes_through_the_one_append(tmp_path, monkeypatch):
    calls = []
    real = escape_log.append

    def spy(path, lines):
        lines = list(lines)
        calls.append([line["kind"] for line in lines])
        real(path, lines)

    monkeypatch.setattr(escape_log, "append", spy)
    log = str(tmp_path / "escapes")
    rng_escape.install(log)
    try:
        np.random.default_rng()  # an escape of rng_escape's
        rng_escape.finish()  # its use line
    finally:
        rng_escape.uninstall()
    watch = DrawWatch(log)
    watch.install()
    try:
        torch.rand(1)  # drawn before any seeding
    finally:
        watch.finish()
    seeds = SeedWatch(log)
    seeds.start()
    random.random()  # Python's global generator moves, never seeded
    seeds.check(rng_fingerprints(torch.device("cpu")), watched={"numpy"})
    assert calls == [["numpy.random.default_rng()"], ["numpy.random.default_rng()"],
                     ["torch global generator"], ["random.seed(not called)"]]
    kinds = [json.loads(line)["kind"] for line in (tmp_path / "escapes").read_text().splitlines()]
    assert kinds == [k for call in calls for k in call]


_entry = st.fixed_dictionaries({"kind": st.sampled_from(["a()", "b()"]),
                                "where": st.sampled_from(["x.py:1", "y.py:2", None]),
                                "pid": st.integers(1, 4)})


@given(st.lists(_entry, max_size=12))
def test_read_log_gives_one_entry_per_kind_and_place_counting_the_lines(tmp_path_factory, entries):
    path = str(tmp_path_factory.mktemp("log") / "escapes")
    escape_log.append(path, entries)
    read = escape_log.read_log(path)
    keys = list(dict.fromkeys((e["kind"], e["where"]) for e in entries))
    assert [(e["kind"], e["where"]) for e in read] == keys
    assert [e["count"] for e in read] == [sum((x["kind"], x["where"]) == k for x in entries)
                                          for k in keys]
    assert all(e["use"] == "drawn" for e in read)  # no process said otherwise


def test_rng_escape_still_offers_the_reader():
    assert rng_escape.read_log is escape_log.read_log
