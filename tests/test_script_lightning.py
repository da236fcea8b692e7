"""Script mode on Lightning's ``Trainer`` (needs ``lightning``: the ``realworld`` extra).

Lightning's automatic optimization runs ``training_step`` and the backward pass inside
``optimizer.step(closure)``; its manual optimization calls ``self.manual_backward`` and
``opt.step()`` itself. One small LightningModule, trained by ``Trainer.fit`` on the CPU and
audited unmodified: with a backward hook that scales the gradient sent back through ``head`` by
an unseeded factor, without it (Lightning's ``seed_everything(workers=True)``, DataLoader
workers), and in manual optimization.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from audit import cli

pytestmark = pytest.mark.slow

TRAIN = '''\
import os
import sys

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def jitter(module, grad_input, grad_output):
    return tuple(g * (1 + 1e-3 * os.urandom(1)[0] / 255) if g is not None else None
                 for g in grad_input)


class Net(L.LightningModule):
    def __init__(self, fault: bool):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 32), nn.Tanh())
        self.head = nn.Linear(32, 3)
        if fault:
            self.head.register_full_backward_hook(jitter)  # PLANTED

    def forward(self, x):
        return self.head(self.body(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


class Manual(Net):
    def __init__(self):
        super().__init__(False)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        opt.zero_grad()
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.manual_backward(loss)
        opt.step()
        return loss


if __name__ == "__main__":
    kind = sys.argv[1]
    L.seed_everything(0, workers=True)
    data = TensorDataset(torch.randn(64, 8), torch.randint(0, 3, (64,)))
    workers = 2 if kind == "clean" else 0
    loader = DataLoader(data, batch_size=16, shuffle=True, num_workers=workers,
                        persistent_workers=bool(workers))
    model = Manual() if kind == "manual" else Net(kind == "fault")
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(model, loader)
'''

KINDS = ("fault", "clean", "manual")


@pytest.fixture(scope="module")
def audits(tmp_path_factory):
    pytest.importorskip("lightning")
    folder = tmp_path_factory.mktemp("lightning")
    (folder / "train.py").write_text(TRAIN)
    (folder / "pyproject.toml").write_text("[project]\nname = 'scripts'\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setenv("OMP_NUM_THREADS", "1")
        patch.setenv("PYTHONHASHSEED", "0")

        def audit(kind: str) -> tuple:
            out = folder / f"report-{kind}"
            code = cli.main(["determinism", "--quiet", "--no-attribution", "--steps", "3",
                             "--out", str(out), "--", "python", "train.py", kind])
            report = out / "determinism.json"
            return code, json.loads(report.read_text()) if report.exists() else None

        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = {kind: pool.submit(audit, kind) for kind in KINDS}
            return {kind: f.result() for kind, f in futures.items()}


def test_a_lightning_module_whose_backward_is_unseeded_parts_in_the_backward_pass(audits):
    code, doc = audits["fault"]
    assert code == 1 and doc["verdict"] == "nondeterministic"
    fd = doc["first_divergence"]
    assert (fd["step"], fd["stage"], fd["module"]) == (0, "backward", "head")
    assert "closure" in doc["detail"]["data"]
    assert [r["steps_completed"] for r in doc["run_info"]] == [3, 3]


def test_a_clean_lightning_module_with_seeded_workers_passes(audits):
    code, doc = audits["clean"]
    assert (code, doc["verdict"]) == (0, "deterministic")
    assert [r["steps_completed"] for r in doc["run_info"]] == [3, 3]


def test_lightning_manual_optimization_passes(audits):
    code, doc = audits["manual"]
    assert (code, doc["verdict"]) == (0, "deterministic")
    assert [r["steps_completed"] for r in doc["run_info"]] == [3, 3]
