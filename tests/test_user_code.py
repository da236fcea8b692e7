"""One rule for "is this the user's code?": the audit's folders, the standard library, torch,
NumPy and installed packages are not; a user's folder is, whatever it is called."""
from __future__ import annotations

import os
import random
import sys

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from audit.probes.run import rng_escape, processes as runs, seed_log
from audit.probes.run.processes import Frame, is_user_file, library_dirs, user_frame


@pytest.mark.parametrize("module", [runs, rng_escape, random, np, torch])
def test_the_audit_the_standard_library_and_the_wrapped_libraries_are_not_the_users(module):
    assert not is_user_file(module.__file__)
    assert os.path.abspath(module.__file__).startswith(library_dirs())


folder = st.text(st.characters(min_codepoint=97, max_codepoint=122), min_size=1, max_size=8)


@given(parts=st.lists(st.one_of(folder, st.sampled_from(["audit", "probes", "reports"])),
                      min_size=1, max_size=4))
def test_a_users_folder_is_the_users_whatever_it_is_called(tmp_path_factory, parts):
    path = os.path.join(str(tmp_path_factory.getbasetemp()), "project", *parts, "train.py")
    assert is_user_file(path)
    assert not is_user_file("<string>")
    assert not is_user_file(os.path.join(sys.prefix, "lib", "site-packages", "x", "y.py"))


def test_the_innermost_user_frame_is_found():
    frames = [Frame(runs.__file__, 10, "inner"), Frame("/home/me/audit/train.py", 7, "main"),
              Frame("/home/me/audit/outer.py", 3, "<module>")]
    assert user_frame(frames).file == "/home/me/audit/train.py"


def test_seed_calls_from_here_are_the_users():
    where = seed_log.caller(0)
    assert where is not None and where.rsplit(":", 1)[0].endswith("test_user_code.py")


@pytest.mark.parametrize("kind", ["site-packages", "dist-packages"])
def test_packages_in_any_site_folder_are_libraries_to_the_escape_tracer(kind, tmp_path,
                                                                       monkeypatch):
    """A site folder outside the interpreter's own tree (Debian's dist-packages, a user site, a
    folder a .pth file adds): what a package there does is the library's; the place named is
    the user's line that called it."""
    site = tmp_path / "elsewhere" / kind
    (site / "somelib").mkdir(parents=True)
    (site / "somelib" / "__init__.py").write_text("def make(probe):\n    return probe()\n")
    monkeypatch.syspath_prepend(str(site))
    library_dirs.cache_clear()
    try:
        import somelib

        def probe():
            return rng_escape.user_frame(library_dirs())

        assert not is_user_file(somelib.__file__)
        where = somelib.make(probe)
    finally:
        library_dirs.cache_clear()
        sys.modules.pop("somelib", None)
    assert where is not None and os.path.basename(where.split(":")[0]) == "test_user_code.py"
