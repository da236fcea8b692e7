"""Escaped randomness is seen with the user's file and line, and pinned by the knob."""
import random

import numpy as np
import pytest
import torch

from audit.probes import rng_escape


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
