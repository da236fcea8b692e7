"""Script mode's hooks on the user's objects: every name wrapped and every handle registered is
removed again, after a run and after an install that fails part-way."""
import random
import sys

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import dataloader

from audit.probes.run.trace import TraceWriter
from audit.probes.script import data as script_data
from audit.probes.script.draws import DrawWatch
from audit.probes.script.tracer import ScriptTracer


def _names() -> tuple:
    return (torch.optim.Optimizer.__init__, dataloader._BaseDataLoaderIter.__next__,
            torch.autograd.backward, torch.autograd.grad, np.random.seed, np.random.set_state,
            random.seed, random.setstate, F.cross_entropy, torch.manual_seed, np.random.rand)


def _handles() -> tuple:
    module, optim = torch.nn.modules.module, sys.modules["torch.optim.optimizer"]
    return (len(module._global_forward_pre_hooks), len(module._global_forward_hooks),
            len(optim._global_optimizer_pre_hooks), len(optim._global_optimizer_post_hooks))


class Broken(Exception):
    pass


@pytest.mark.parametrize("where", ["data", "draws"])
def test_an_install_that_fails_part_way_removes_what_it_made(tmp_path, monkeypatch, where):
    def fail(*args, **kwargs):
        raise Broken()

    if where == "data":  # half way: after the optimizer, loader, backward and seeding wrappers
        monkeypatch.setattr(script_data, "install", fail)
    else:  # the last: after every hook
        monkeypatch.setattr(DrawWatch, "install", fail)
    names, handles = _names(), _handles()
    writer = TraceWriter(str(tmp_path / "t.trace"))
    tracer = ScriptTracer(writer, 5, detail=True, draws=DrawWatch(str(tmp_path / "escapes")))
    with pytest.raises(Broken):
        tracer.install()
    assert not tracer.hooks.installed
    assert _names() == names and _handles() == handles
    tracer.uninstall()  # as the bootstrap's finally does: nothing left to do, nothing written
    writer.close()
    assert (tmp_path / "t.trace").read_text() == ""
    assert not (tmp_path / "escapes").exists()


def test_a_run_leaves_no_hook_behind(tmp_path):
    names, handles = _names(), _handles()
    writer = TraceWriter(str(tmp_path / "t.trace"))
    tracer = ScriptTracer(writer, 5, detail=True, draws=DrawWatch(str(tmp_path / "escapes")))
    tracer.install()
    try:
        assert _names() != names and _handles() != handles
        w = torch.zeros(2, requires_grad=True)
        opt = torch.optim.SGD([w], lr=0.1)
        for _ in range(2):
            opt.zero_grad()
            F.mse_loss(w * 2, torch.ones(2)).backward()
            opt.step()
    finally:
        tracer.uninstall()
        writer.close()
    assert _names() == names and _handles() == handles
    assert tracer.done == 2
    tracer.uninstall()  # twice is harmless
    assert _names() == names
