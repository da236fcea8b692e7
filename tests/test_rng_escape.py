"""Escaped randomness is seen with the user's file and line, and pinned by the knob; what
became of each generator made without a seed (drawn from, reseeded first, unused), and who
made it."""
import json
import os
import random
import textwrap

import numpy as np
import pytest
import torch

from audit.probes.run import rng_escape, rng_use


@pytest.fixture
def tracer(tmp_path):
    log = str(tmp_path / "escapes.jsonl")
    rng_escape.install(log)
    yield log
    rng_escape.uninstall()


def line_of(marker):
    with open(__file__) as fh:
        for number, line in enumerate(fh, 1):
            if marker in line and "line_of" not in line:
                return number


def test_each_kind_is_seen_at_its_line(tracer):
    np.random.default_rng()  # esc-default-rng
    random.Random()  # esc-random
    torch.Generator().seed()  # esc-generator
    np.random.seed(None)  # esc-np-seed
    import time
    random.seed(time.time())  # esc-clock
    np.random.default_rng(5)  # seeded: not an escape
    random.Random(3)
    seen = {(e["kind"], e["where"].rsplit(":", 1)[1]) for e in rng_escape.read_log(tracer)}
    assert seen == {
        ("numpy.random.default_rng()", str(line_of("esc-default-rng"))),
        ("random.Random()", str(line_of("esc-random"))),
        ("torch.Generator.seed()", str(line_of("esc-generator"))),
        ("numpy.random.seed()", str(line_of("esc-np-seed"))),
        ("random.seed(time)", str(line_of("esc-clock"))),
    }
    assert all(e["where"].startswith("tests/") or "test_rng_escape.py" in e["where"]
               for e in rng_escape.read_log(tracer))


def test_each_detail_reads_after_is(tracer):
    """Reports write "{kind} is {detail}": every detail opens with a participle ("seeded from
    the clock", "fed by os.urandom"), never a verb of its own ("is draws from")."""
    random.SystemRandom()  # esc-system
    np.random.default_rng()
    import time
    random.seed(time.time())
    escapes = rng_escape.read_log(tracer)
    assert {e["kind"] for e in escapes} == {"random.SystemRandom()", "numpy.random.default_rng()",
                                            "random.seed(time)"}
    system = next(e for e in escapes if e["kind"] == "random.SystemRandom()")
    assert system["where"].endswith(f":{line_of('esc-system')}")
    assert all(e["detail"].split()[0].endswith("ed") for e in escapes), escapes


def test_replacements_still_pass_isinstance_checks(tracer):
    assert isinstance(np.random.mtrand._rand, np.random.RandomState)
    assert isinstance(np.random.default_rng(0).bit_generator, np.random.PCG64)
    assert isinstance(torch.Generator(), torch._C.Generator)
    assert isinstance(random.Random(1), random.Random)


def test_pinning_makes_unseeded_generators_repeat(tmp_path):
    rng_escape.install(None, pin=True)
    try:
        draws = []
        for _ in range(2):
            rng_escape._state["count"].clear()
            draws.append((np.random.default_rng().random(), random.Random().random(),
                          torch.randn(1, generator=torch.Generator().manual_seed(1)).item()))
        assert draws[0] == draws[1]
    finally:
        rng_escape.uninstall()


def test_library_internal_generators_are_not_blamed(tracer):
    import tempfile
    tempfile.mkdtemp()  # tempfile makes a random.Random() inside the standard library
    assert all("tempfile" not in (e["where"] or "") for e in rng_escape.read_log(tracer))


# ------------------------------------------------------------------ what became of each generator

def _uses(log):
    return {e["where"].rsplit(":", 1)[1]: e["use"] for e in rng_escape.read_log(log)}


def test_each_generator_is_judged_by_what_it_did(tracer):
    unused = np.random.default_rng()  # use-unused
    drawn = np.random.default_rng()  # use-drawn
    drawn.random()
    state = np.random.RandomState()  # use-reseeded
    state.seed(3)
    state.rand()
    late = random.Random()  # use-late-reseed
    late.random()
    late.seed(4)
    gen = torch.Generator()
    gen.seed()  # use-torch-reseeded
    gen.manual_seed(1)
    torch.rand(2, generator=gen)
    system = random.SystemRandom()  # use-system
    sequence = np.random.SeedSequence()  # use-sequence
    np.random.Generator(np.random.PCG64(sequence))  # made from it, never drawn from
    entropy = np.random.SeedSequence()  # use-entropy
    entropy.generate_state(2)  # its entropy goes somewhere the audit cannot follow
    np.random.seed()  # use-global-reseeded
    np.random.seed(5)
    rng_escape.finish()
    assert _uses(tracer) == {
        str(line_of("use-unused")): "unused", str(line_of("use-drawn")): "drawn",
        str(line_of("use-reseeded")): "reseeded", str(line_of("use-late-reseed")): "drawn",
        str(line_of("use-torch-reseeded")): "reseeded", str(line_of("use-system")): "unused",
        str(line_of("use-sequence")): "unused", str(line_of("use-entropy")): "drawn",
        str(line_of("use-global-reseeded")): "reseeded"}
    assert unused is not None and system is not None


def test_a_copy_of_a_generator_drawn_from_counts_and_is_no_escape_of_its_own(tracer):
    import copy

    held = np.random.Generator(np.random.PCG64(np.random.SeedSequence()))  # copy-source
    twin = copy.deepcopy(held)
    assert _uses(tracer) == {str(line_of("copy-source")): "drawn"}  # no use line yet: drawn
    rng_escape.finish()
    assert _uses(tracer) == {str(line_of("copy-source")): "unused"}
    twin.random()
    rng_escape.finish()  # a second process's say, as it were: drawn wins
    assert _uses(tracer) == {str(line_of("copy-source")): "drawn"}


def test_a_process_that_did_not_say_counts_as_drawn(tmp_path):
    log = tmp_path / "escapes.jsonl"
    lines = [{"kind": "random.Random()", "where": "a.py:1", "pid": 1},
             {"kind": "random.Random()", "where": "a.py:1", "pid": 2},
             {"kind": "random.Random()", "where": "a.py:1", "use": "unused", "pid": 1}]
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert [e["use"] for e in rng_escape.read_log(str(log))] == ["drawn"]
    log.write_text("".join(json.dumps(line) + "\n" for line in lines[:1] + lines[2:]))
    assert [e["use"] for e in rng_escape.read_log(str(log))] == ["unused"]


def test_a_generator_alive_when_the_process_forks_counts_as_drawn(tracer):
    np.random.default_rng()  # fork-made
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    rng_escape.finish()
    assert _uses(tracer) == {str(line_of("fork-made")): "drawn"}


def test_a_library_made_generator_names_the_call_the_users_line_and_its_holder(tracer, tmp_path,
                                                                               monkeypatch):
    lib = tmp_path / "site-packages" / "fakelib"
    lib.mkdir(parents=True)
    (lib / "__init__.py").write_text(textwrap.dedent("""
        import numpy as np

        class Space:
            def __init__(self):
                self.rng = np.random.default_rng()

            def seed(self, seed):
                self.rng = np.random.default_rng(seed)

        class Env:
            def __init__(self):
                self.action_space = Space()
    """))
    monkeypatch.syspath_prepend(str(tmp_path / "site-packages"))
    import fakelib

    env = fakelib.Env()  # lib-call
    escape = next(e for e in rng_escape.escapes())
    assert escape["where"].endswith(f":{line_of('lib-call')}")
    assert escape["made_by"] == "fakelib.Env"
    env.action_space.rng.random()
    names = {"env": env}
    assert rng_use.holder(rng_use.holders((escape["kind"], escape["where"])), names) == \
        "env.action_space"
    rng_escape.finish()
    (entry,) = rng_escape.read_log(tracer)
    assert (entry["use"], entry["made_by"]) == ("drawn", "fakelib.Env")
    # the holder is searched for from the globals of the user's code: this test module's
    # globals do not reach ``env``, a local
    assert entry["holder"] is None


def test_the_holder_search_survives_objects_that_raise_and_skips_private_names():
    class Bad:
        @property
        def seed(self):
            raise RuntimeError("a property that raises")

    class Space:
        def __init__(self, rng):
            self.rng = rng

        def seed(self, seed):
            self.rng = np.random.default_rng(seed)

    rng = np.random.default_rng(0)
    roots = {"_hidden": Space(rng), "bad": Bad(), "envs": [Bad(), {"space": Space(rng)}]}
    assert rng_use.holder([rng.bit_generator], roots) == "envs[1]['space']"
    assert rng_use.holder([rng.bit_generator], {"_hidden": Space(rng)}) is None
