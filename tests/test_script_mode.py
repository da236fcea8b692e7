"""Script mode: ``audit determinism [options] -- python train.py [args...]``.

Realistic training scripts are written to a temporary folder and audited unmodified through
``audit.cli.main``, the way a user runs them: their own argparse and seeding, DataLoader
workers with torchvision augmentation, ``sys.exit`` and crashes part-way, ``python -m``, two
optimizers, and one planted source of nondeterminism for each stage the bootstrap sees (data,
forward, backward, the string-hash seed). Each audit starts fresh Python processes, so the
audits run once per session, two at a time, from one shared working folder, and the tests
assert on their reports. The tracer itself is also checked in-process against target mode's
trace of the same training: the fingerprints must be the same.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from audit import cli


from audit.probes.run import program as script_runner
from audit.probes.run.spec import RunSpec, write_spec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ------------------------------------------------------------------------------ the scripts

ARGPARSE_TRAIN = '''\
"""Train a small classifier; seeds everything itself from --seed."""
import argparse
import os
import random
import sys

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from helpers import make_model  # a sibling module: the script's folder is first on sys.path


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--expect-cwd", required=True)
    return parser.parse_args()


def main():
    args = parse_args()
    assert sys.argv[0] == "argparse_seeded/train.py", sys.argv
    assert sys.path[0] == os.path.dirname(os.path.abspath(__file__)), sys.path[:2]
    assert os.getcwd() == args.expect_cwd, os.getcwd()
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    features = torch.randn(48, 10)
    labels = (features[:, 0] > 0).long() + (features[:, 1] > 0).long()
    train = DataLoader(TensorDataset(features[:32], labels[:32]), batch_size=16, shuffle=True)
    val = DataLoader(TensorDataset(features[32:], labels[32:]), batch_size=8)
    model = make_model(10, 3)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)
    crit = nn.CrossEntropyLoss()
    for epoch in range(args.epochs):
        model.train()
        for xb, yb in train:
            opt.zero_grad()
            loss = crit(model(xb), yb)
            loss.backward()
            opt.step()
        sched.step()
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in val)
        print(f"epoch {epoch}: loss {loss.item():.4f} val acc {correct / 16:.2f}", flush=True)


if __name__ == "__main__":
    main()
'''

ARGPARSE_HELPERS = '''\
from torch import nn


def make_model(n_in, n_out):
    return nn.Sequential(nn.Linear(n_in, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2),
                         nn.Linear(32, n_out))
'''

WORKERS_TRAIN = '''\
"""CIFAR-style training: DataLoader workers and torchvision augmentation, seeded."""
import argparse
import random

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2


class Images(Dataset):
    def __init__(self, n=64):
        g = torch.Generator().manual_seed(1)
        self.images = torch.rand(n, 3, 16, 16, generator=g)
        self.labels = torch.randint(0, 4, (n,), generator=g)
        self.augment = v2.Compose([v2.RandomCrop(16, padding=2), v2.RandomHorizontalFlip(),
                                   v2.Normalize((0.5,) * 3, (0.25,) * 3)])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        image = self.augment(self.images[i])
        if random.random() < 0.5:  # Python's and NumPy's RNGs in the workers: seeded by torch
            image = image + 0.01 * float(np.random.rand())
        return image, self.labels[i]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    loader = DataLoader(Images(), batch_size=8, shuffle=True, num_workers=args.workers)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.5), nn.Linear(8 * 8 * 8, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(5):
        for images, labels in loader:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(images), labels)
            loss.backward()
            opt.step()


if __name__ == "__main__":
    main()
'''

EXITS_TRAIN = '''\
import argparse
import sys

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--code", type=int, default=0)
parser.add_argument("--after", type=int, default=2)
args = parser.parse_args()
torch.manual_seed(0)
model = nn.Linear(4, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
for step in range(100):
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    if step + 1 == args.after:
        print("early stopping", flush=True)
        sys.exit(args.code)
'''

CRASH_TRAIN = '''\
import torch
from torch import nn


def check(loss, step):
    if step == 2:
        raise FloatingPointError(f"loss is not finite at step {step}")  # CRASH HERE


torch.manual_seed(0)
model = nn.Linear(4, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
for step in range(100):
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    check(loss, step)
    loss.backward()
    opt.step()
'''

CRASH_EARLY_TRAIN = '''\
import torch

torch.manual_seed(0)
data = torch.load("missing-dataset.pt")  # CRASH HERE
'''

PACKAGE_INIT = ""
PACKAGE_MODEL = '''\
from torch import nn


def build(width):
    return nn.Sequential(nn.Linear(6, width), nn.GELU(), nn.Linear(width, 2))
'''
PACKAGE_TRAIN = '''\
import argparse
import os
import sys

import torch

from .model import build

assert __name__ == "__main__" and __package__ == "trainer_pkg", (__name__, __package__)
assert sys.argv[0].endswith(os.path.join("trainer_pkg", "train.py")), sys.argv
assert sys.path[0] == os.getcwd(), sys.path[:2]
parser = argparse.ArgumentParser()
parser.add_argument("--width", type=int, default=4)
args = parser.parse_args()
torch.manual_seed(3)
model = build(args.width)
opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
for step in range(50):
    x = torch.randn(16, 6)
    loss = (model(x) - x[:, :2]).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
'''

GAN_TRAIN = '''\
import torch
from torch import nn


class Jitter(nn.Module):
    def __init__(self):
        super().__init__()
        self.gen = torch.Generator()
        self.gen.seed()

    def forward(self, x):
        return x + 1e-3 * torch.rand(x.shape, generator=self.gen)  # PLANTED


torch.manual_seed(0)
netG = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8))
netD = nn.Sequential(nn.Linear(8, 16), Jitter(), nn.LeakyReLU(0.2), nn.Linear(16, 1))
optD = torch.optim.Adam(netD.parameters(), lr=1e-3)
optG = torch.optim.Adam(netG.parameters(), lr=1e-3)
real = torch.randn(16, 8)
bce = nn.BCEWithLogitsLoss()
for it in range(50):
    optD.zero_grad()
    fake = netG(torch.randn(16, 4))
    loss_d = bce(netD(real), torch.ones(16, 1)) + bce(netD(fake.detach()), torch.zeros(16, 1))
    loss_d.backward()
    optD.step()
    optG.zero_grad()
    bce(netD(fake), torch.ones(16, 1)).backward()
    optG.step()
'''

DATA_TRAIN = '''\
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


class Jittered(Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(64, 8, generator=g)
        self.y = torch.randint(0, 3, (64,), generator=g)
        self.rng = np.random.default_rng()  # PLANTED

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i] + torch.from_numpy(self.rng.normal(0, 0.01, 8).astype("float32")), self.y[i]


def main():
    torch.manual_seed(0)
    loader = DataLoader(Jittered(), batch_size=16, shuffle=True)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for epoch in range(3):
        for xb, yb in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()


if __name__ == "__main__":
    main()
'''

FORWARD_TRAIN = '''\
import torch
from torch import nn


class NoisyActivation(nn.Module):
    """Regularizing noise from a generator of its own, seeded from the OS."""

    def __init__(self):
        super().__init__()
        self.gen = torch.Generator()
        self.gen.seed()

    def forward(self, x):  # PLANTED
        return torch.relu(x) + 0.01 * torch.randn(x.shape, generator=self.gen)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), NoisyActivation(), nn.Linear(16, 3))

    def forward(self, x):
        return self.body(x)


torch.manual_seed(0)
x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
model = Net()
opt = torch.optim.SGD(model.parameters(), lr=0.05)
for step in range(20):
    batch = slice(step % 4 * 8, step % 4 * 8 + 8)
    opt.zero_grad()
    nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
    opt.step()
'''

BACKWARD_TRAIN = '''\
import os

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class OrderedSum(torch.autograd.Function):
    """x @ w.T whose weight gradient adds the per-sample terms in the order a parallel kernel
    would finish them, unless deterministic algorithms are asked for."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x @ w.t()

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        order = list(range(x.shape[0]))
        if not torch.are_deterministic_algorithms_enabled():
            noise = os.urandom(len(order))
            order.sort(key=lambda i: noise[i])
        grad_w = torch.zeros_like(w)
        for i in order:
            grad_w += torch.outer(grad[i], x[i])
        return grad @ w, grad_w


class AtomicLinear(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in) / n_in ** 0.5)

    def forward(self, x):  # PLANTED
        return OrderedSum.apply(x, self.weight)


torch.manual_seed(0)
loader = DataLoader(TensorDataset(torch.randn(64, 8), torch.randint(0, 3, (64,))),
                    batch_size=32, shuffle=True)
model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), AtomicLinear(32, 3))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for epoch in range(3):
    for xb, yb in loader:
        opt.zero_grad()
        nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()
'''

HASH_TRAIN = '''\
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

SPECIES = ["cat", "dog", "bird", "fish", "frog", "horse", "deer", "ship", "truck", "plane"]


class Animals(Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.names = [SPECIES[int(i)] for i in torch.randint(0, 10, (64,), generator=g)]
        self.features = torch.randn(64, 8, generator=g)
        self.label_of = {name: i for i, name in enumerate(set(self.names))}  # PLANTED

    def __len__(self):
        return len(self.names)

    def __getitem__(self, i):
        return self.features[i], self.label_of[self.names[i]]


torch.manual_seed(0)
loader = DataLoader(Animals(), batch_size=16)
model = nn.Linear(8, 10)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for epoch in range(3):
    for xb, yb in loader:
        opt.zero_grad()
        nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()
'''

FILES = {
    "argparse_seeded/train.py": ARGPARSE_TRAIN,
    "argparse_seeded/helpers.py": ARGPARSE_HELPERS,
    "workers_tv/train.py": WORKERS_TRAIN,
    "exits/train.py": EXITS_TRAIN,
    "crash/train.py": CRASH_TRAIN,
    "crash_early/train.py": CRASH_EARLY_TRAIN,
    "trainer_pkg/__init__.py": PACKAGE_INIT,
    "trainer_pkg/model.py": PACKAGE_MODEL,
    "trainer_pkg/train.py": PACKAGE_TRAIN,
    "gan/train.py": GAN_TRAIN,
    "data_unseeded/train.py": DATA_TRAIN,
    "forward_noise/train.py": FORWARD_TRAIN,
    "backward_order/train.py": BACKWARD_TRAIN,
    "hash_labels/train.py": HASH_TRAIN,
}


def line_of(path: str, marker: str) -> int:
    """The 1-based line of ``path``'s script text holding ``marker``."""
    return next(i for i, line in enumerate(FILES[path].splitlines(), 1) if marker in line)


# (options, command after "--"), in the order the audits start: those that attribute a cause
# (knob pairs) first, then those with a replay, then those that pass or stop (two runs each),
# so that the two audits at a time end together.
AUDITS = {
    "data": (["--steps", "3"], ["python", "data_unseeded/train.py"]),
    "backward": (["--steps", "3"], ["python", "backward_order/train.py"]),
    "gan": (["--steps", "4", "--no-attribution"], ["python", "gan/train.py"]),
    "forward": (["--steps", "3", "--no-attribution"], ["python", "forward_noise/train.py"]),
    "workers": (["--steps", "4"], ["python3", "workers_tv/train.py", "--workers", "2"]),
    "argparse": (["--steps", "4"], ["python", "argparse_seeded/train.py", "--epochs", "3",
                                    "--lr", "0.1", "--expect-cwd", "{cwd}"]),
    "exit3": (["--steps", "4"], ["python", "exits/train.py", "--code", "3", "--after", "2"]),
    "crash": (["--steps", "4"], ["python", "crash/train.py"]),
    "module": (["--steps", "3"], ["python", "-m", "trainer_pkg.train", "--width", "8"]),
    "hash": (["--steps", "3"], ["python", "hash_labels/train.py"]),
}


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scripts")
    for rel, text in FILES.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (folder / "pyproject.toml").write_text("[project]\nname = 'scripts'\n")  # no [tool.audit] from above
    return folder


def _audit(workdir, name: str) -> tuple:
    options, command = AUDITS[name]
    out = workdir / f"report-{name}"
    argv = ["determinism", "--jobs", "2", "--quiet", "--out", str(out), *options, "--",
            *[word.format(cwd=str(workdir)) for word in command]]
    code = cli.main(argv)
    report = out / "determinism.json"
    return code, json.loads(report.read_text()) if report.exists() else None


def _bootstrap_run(workdir, command: list, steps: int) -> list:
    """One run under the bootstrap, without the orchestrator: its trace records."""
    spec = RunSpec(name="run", trace=str(workdir / "direct.trace"),
                   escape_log=str(workdir / "direct.escapes"), seed=0, steps=steps, script=command)
    write_spec(spec, str(workdir / "direct.json"))
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run(script_runner.command(spec), cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=600)
    from audit.probes.run.trace import read_trace

    return proc.returncode, read_trace(spec.trace)


@pytest.fixture(scope="session")
def audits(workdir):
    """Every audit above, two at a time from the shared working folder (one cwd for all).

    The runs inherit this process's environment: one CPU thread each (two audits at once on
    small machines) and, but for the hash-seed audit that runs last on its own, a fixed
    PYTHONHASHSEED, which spares the other planted audits a rerun with that knob."""
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "PYTHONHASHSEED")}
    old_cwd = os.getcwd()
    os.chdir(workdir)
    os.environ.update(OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = {name: pool.submit(_audit, workdir, name) for name in AUDITS if name != "hash"}
            futures["exit0"] = pool.submit(
                _bootstrap_run, workdir, ["python", "exits/train.py", "--code", "0", "--after", "2"], 4)
            results = {name: f.result() for name, f in futures.items()}
        del os.environ["PYTHONHASHSEED"]
        results["hash"] = _audit(workdir, "hash")
        return results
    finally:
        os.chdir(old_cwd)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def check_contract(doc: dict) -> None:
    """determinism.json as the contract fixes it (schema audit.determinism/1)."""
    assert list(doc)[:9] == ["schema", "verdict", "runs", "steps", "seed", "device",
                             "environment", "first_divergence", "causes"]
    assert doc["schema"] == "audit.determinism/1"
    assert doc["verdict"] in ("deterministic", "nondeterministic")
    assert doc["mode"] == "script"
    assert doc["environment"]["torch"] and doc["environment"]["device"] == "cpu"
    fd = doc["first_divergence"]
    if doc["verdict"] == "deterministic":
        assert fd is None and doc["causes"] == []
        return
    assert set(fd) == {"step", "stage", "module", "tensor", "max_abs_diff"}
    assert fd["stage"] in ("init", "data", "rng", "forward", "backward", "optimizer")
    for cause in doc["causes"]:
        assert set(cause) == {"source", "confirmed", "evidence", "fix", "where"}
        assert cause["source"] in ("unseeded_rng", "hash_seed", "dataloader",
                                   "nondeterministic_algorithm", "cudnn_benchmark",
                                   "thread_count", "unknown")


def runs_of(doc: dict) -> list:
    return [(r["status"], r["steps_completed"], r["exit_code"]) for r in doc["run_info"]]


# ------------------------------------------------------------------------------ end to end


def test_argparse_script_with_its_own_seeding_passes(audits):
    code, doc = audits["argparse"]
    assert code == 0, doc and (doc.get("error"), doc["run_info"])
    check_contract(doc)
    assert (doc["verdict"], doc["runs"], doc["steps"]) == ("deterministic", 2, 4)
    assert runs_of(doc) == [("ok", 4, 0), ("ok", 4, 0)]
    assert doc["target"].startswith("python argparse_seeded/train.py --epochs 3")
    assert "DataLoader" in doc["detail"]["data"]
    assert doc["rng_escapes"] == []  # the lazy imports of torch and sympy are not the script's


def test_dataloader_workers_and_augmentation_are_no_false_alarm(audits):
    code, doc = audits["workers"]
    assert code == 0, doc and (doc["first_divergence"], doc.get("error"))
    check_contract(doc)
    assert doc["verdict"] == "deterministic"
    assert runs_of(doc) == [("ok", 4, 0), ("ok", 4, 0)]
    assert doc["rng_escapes"] == []


def test_sys_exit_with_a_status_is_reported_and_compared_over_the_steps_made(audits):
    code, doc = audits["exit3"]
    check_contract(doc)
    assert runs_of(doc) == [("exited", 2, 3), ("exited", 2, 3)]
    assert "sys.exit(3)" in doc["run_info"][0]["message"]
    # The two steps both runs made agree; the gate still fails "runs completed" (exit 1).
    assert doc["verdict"] == "deterministic" and doc.get("error") is None
    assert code == 1


def test_sys_exit_zero_is_an_early_end(audits):
    code, records = audits["exit0"]
    assert code == 0
    end = records[-1]
    assert (end["type"], end["status"], end["steps"], end["exit_code"]) == ("end", "ended_early", 2, 0)
    assert "sys.exit(0)" in end["message"]
    assert sum(r["type"] == "step" for r in records) == 2


def test_a_crash_keeps_what_was_measured_and_says_where(audits):
    code, doc = audits["crash"]
    assert code == 2  # a crashing script: the reports are written, the exit says usage/crash
    check_contract(doc)
    where = f"crash/train.py:{line_of('crash/train.py', 'CRASH HERE')}"
    assert runs_of(doc) == [("crashed", 2, 1), ("crashed", 2, 1)]
    message = doc["run_info"][0]["message"]
    assert "FloatingPointError: loss is not finite at step 2" in message and where in message
    assert "crashed after 2 steps" in doc["error"] and where in doc["error"]
    assert doc["verdict"] == "deterministic"  # over the two steps both runs made


def test_python_dash_m_package_module(audits):
    code, doc = audits["module"]
    assert code == 0, doc and (doc.get("error"), doc["run_info"])
    check_contract(doc)
    assert doc["verdict"] == "deterministic" and runs_of(doc) == [("ok", 3, 0), ("ok", 3, 0)]
    assert doc["target"] == "python -m trainer_pkg.train --width 8"
    assert "first module call" in doc["detail"]["data"]  # no DataLoader: the model's inputs


def test_two_optimizers_say_which_one_parted(audits):
    code, doc = audits["gan"]
    assert code == 1
    check_contract(doc)
    fd = doc["first_divergence"]
    # optD was made first: opt0 trains netD, whose Jitter (index 1) parts the runs.
    assert (fd["step"], fd["stage"], fd["module"]) == (0, "forward", "opt0.1")
    assert "opt0=Adam" in doc["detail"]["data"] and "opt1=Adam" in doc["detail"]["data"]
    cause = doc["causes"][0]
    assert cause["where"] == f"gan/train.py:{line_of('gan/train.py', 'def forward')}"


def test_planted_unseeded_generator_in_the_data(audits):
    code, doc = audits["data"]
    assert code == 1
    check_contract(doc)
    fd = doc["first_divergence"]
    assert (fd["step"], fd["stage"], fd["tensor"]) == (0, "data", "inputs")
    assert fd["max_abs_diff"] > 0
    cause = doc["causes"][0]
    assert (cause["source"], cause["confirmed"]) == ("unseeded_rng", True)
    assert cause["where"] == f"data_unseeded/train.py:{line_of('data_unseeded/train.py', 'PLANTED')}"
    assert "default_rng(seed)" in cause["fix"]
    assert [(e["kind"], e["where"]) for e in doc["rng_escapes"]] == [
        ("numpy.random.default_rng()", cause["where"])]


def test_planted_os_seeded_noise_in_the_forward_pass(audits):
    code, doc = audits["forward"]
    assert code == 1
    check_contract(doc)
    fd = doc["first_divergence"]
    assert (fd["step"], fd["stage"], fd["module"]) == (0, "forward", "body.1")
    assert fd["max_abs_diff"] > 0
    assert "rng_streams" not in doc["detail"]  # NumPy/Python never seeded, never drawn: not compared
    escape = doc["rng_escapes"][0]
    assert (escape["kind"], escape["where"]) == (
        "torch.Generator.seed()", f"forward_noise/train.py:{line_of('forward_noise/train.py', 'self.gen.seed()')}")


def test_planted_order_dependent_backward(audits):
    code, doc = audits["backward"]
    assert code == 1
    check_contract(doc)
    fd = doc["first_divergence"]
    assert (fd["step"], fd["stage"], fd["module"], fd["tensor"]) == (0, "backward", "2", "2.weight")
    cause = doc["causes"][0]
    assert (cause["source"], cause["confirmed"]) == ("nondeterministic_algorithm", True)
    assert cause["where"] == f"backward_order/train.py:{line_of('backward_order/train.py', 'PLANTED')}"
    assert "use_deterministic_algorithms(True)" in cause["fix"]


def test_planted_hash_seed_dependent_labels(audits):
    code, doc = audits["hash"]
    assert code == 1
    check_contract(doc)
    fd = doc["first_divergence"]
    assert (fd["step"], fd["stage"], fd["tensor"]) == (0, "data", "targets")
    cause = doc["causes"][0]
    assert (cause["source"], cause["confirmed"]) == ("hash_seed", True)
    assert "PYTHONHASHSEED" in cause["fix"]


def test_a_crash_before_the_first_step_is_one_line(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = workdir / "report-crash-early"
    code = cli.main(["determinism", "--steps", "3", "--jobs", "2", "--out", str(out), "--",
                     "python", "crash_early/train.py"])
    err = "\n".join(x for x in capsys.readouterr().err.splitlines()
                    if not x.startswith("audit progress:")).strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    where = f"crash_early/train.py:{line_of('crash_early/train.py', 'CRASH HERE')}"
    assert "before its first optimizer step" in err and "FileNotFoundError" in err and where in err
    assert not (out / "determinism.json").exists()


# ------------------------------------------------------------------------------ usage errors


@pytest.mark.parametrize("command, expected", [
    (["train.py"], "put python before train.py"),
    (["torchrun", "--nnodes", "2", "train.py"], "the audit runs the ranks of one node"),
    (["mpirun", "train.py"], "script mode runs a Python program"),
    (["python"], "no script after python"),
    (["python", "missing.py"], "script 'missing.py' not found"),
    (["python", "-m"], "-m needs a module name"),
    (["python", "-m", "no_such_package_xyz.train"], "no module named 'no_such_package_xyz'"),
    (["python", "-m", "pkg.missing"], "no module named 'pkg.missing'"),
    (["python", "-m", "pkg"], "package without a __main__"),
    (["python", "-c", "print(1)"], "python option -c is not supported"),
    (["python", "-E", "train.py"], "python option -E is not supported"),
    (["python", "folder"], "folder without a __main__.py"),
])
def test_bad_commands_are_one_line_usage_errors(tmp_path, monkeypatch, capsys, command, expected):
    (tmp_path / "train.py").write_text("print('hi')\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("raise SystemExit('must not be imported')\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    monkeypatch.chdir(tmp_path)
    code = cli.main(["determinism", "--out", str(tmp_path / "out"), "--", *command])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["determinism", "init", "record"])
@pytest.mark.parametrize("command", [["train.py"], ["python", "missing.py"],
                                     ["torchrun", "--nnodes", "2", "train.py"]])
def test_a_bad_command_names_the_audit_that_was_run(tmp_path, monkeypatch, capsys, kind, command):
    (tmp_path / "train.py").write_text("print('hi')\n")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    monkeypatch.chdir(tmp_path)
    code = cli.main([kind, "--out", str(tmp_path / "out"), "--", *command])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.split(" ", 2)[:2] == ["audit", f"{kind}:"], err


def test_good_commands_parse_and_run_under_the_bootstrap(tmp_path):
    (tmp_path / "train.py").write_text("")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "train.py").write_text("")
    p = script_runner.validate(["python3.11", "-u", "-W", "ignore", "train.py", "--lr", "1", "-m", "x"],
                               str(tmp_path))
    assert (p.path, p.module, p.args, p.options) == ("train.py", None, ["--lr", "1", "-m", "x"],
                                                     ["-u", "-W", "ignore"])
    p = script_runner.validate([sys.executable, "-m", "pkg.train", "a"], str(tmp_path))
    assert (p.path, p.module, p.args) == (None, "pkg.train", ["a"])
    spec = RunSpec(name="run", trace="/s.trace", steps=1, spec_path="/s.json",
                   script=["python", "-OO", "-m", "pkg.train", "--x"])
    argv = script_runner.command(spec)
    assert argv[:3] == [sys.executable, "-O", "-O"] and argv[3] == "-c"
    assert argv[5:] == ["audit.probes.child.bootstrap", "/s.json", "--", "-m", "pkg.train", "--x"]


# ------------------------------------------------------------------------------ in-process


def _tiny_training(seed: int = 0):
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(24, 6, generator=g), torch.randint(0, 3, (24,), generator=g))
    loader = DataLoader(data, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(2))
    return model, loader


def test_script_trace_is_target_modes_trace(tmp_path):
    """The same training traced by target mode and by the script hooks: same fingerprints."""
    import torch
    from torch import nn

    from audit.probes.script.tracer import ScriptTracer, StopScript
    from audit.probes.run.trace import TraceWriter, read_trace, run_traced
    from audit.probes.run.training import TrainingSetup

    def sgd(params):
        return torch.optim.SGD(params, lr=0.1, momentum=0.9)

    model, loader = _tiny_training()
    writer = TraceWriter(str(tmp_path / "target.trace"))
    run_traced(TrainingSetup(model, loader, optimizer=sgd), 5, torch.device("cpu"), writer)
    writer.close()

    model, loader = _tiny_training()
    writer = TraceWriter(str(tmp_path / "script.trace"))
    tracer = ScriptTracer(writer, 5)
    tracer.install()
    try:
        opt = sgd(model.parameters())
        with pytest.raises(StopScript):
            for _ in range(10):
                for x, y in loader:
                    opt.zero_grad(set_to_none=True)
                    nn.functional.cross_entropy(model(x), y).backward()
                    opt.step()
    finally:
        tracer.uninstall()
        writer.close()
    assert tracer.done == 5 and tracer.stopped

    target, script = read_trace(str(tmp_path / "target.trace")), read_trace(str(tmp_path / "script.trace"))
    first = {r["type"]: r for r in reversed(target)}
    other = {r["type"]: r for r in reversed(script)}
    assert other["params"]["names"] == first["params"]["names"]
    assert other["init"]["params"] == first["init"]["params"]
    steps_t = [r for r in target if r["type"] == "step"]
    steps_s = [r for r in script if r["type"] == "step"]
    assert len(steps_s) == len(steps_t) == 5
    keys = ("step", "inputs", "targets", "inputs_rows", "targets_rows", "loss", "loss_value",
            "outputs", "grads", "params")
    for a, b in zip(steps_t, steps_s):
        assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
        assert b["rng"]["torch_cpu"] == a["rng"]["torch_cpu"]
    env = next(r for r in script if r["type"] == "env")
    assert env["environment"] == {} and env["module_sources"] == {}


def test_hooks_are_removed_and_other_optimizers_get_their_own_names(tmp_path):
    import numpy as np
    import torch
    from torch import nn
    from torch.utils.data import dataloader

    from audit.probes.script.tracer import ScriptTracer
    from audit.probes.run.trace import TraceWriter, read_trace

    before = (torch.autograd.backward, dataloader._BaseDataLoaderIter.__next__,
              torch.optim.Optimizer.__init__, np.random.seed)
    writer = TraceWriter(str(tmp_path / "t.trace"))
    tracer = ScriptTracer(writer, 100, detail=True)
    tracer.install()
    try:
        torch.manual_seed(0)
        encoder, head = nn.Linear(4, 4), nn.Sequential(nn.ReLU(), nn.Linear(4, 2))
        opt_a = torch.optim.SGD(encoder.parameters(), lr=0.1)
        opt_b = torch.optim.Adam(head.parameters(), lr=0.1)
        bias = torch.zeros(2, requires_grad=True)
        opt_c = torch.optim.SGD([bias], lr=0.1)
        for _ in range(2):
            for opt in (opt_a, opt_b, opt_c):
                opt.zero_grad()
            (head(encoder(torch.randn(3, 4))) + bias).sum().backward()
            for opt in (opt_a, opt_b, opt_c):
                opt.step()
    finally:
        tracer.uninstall()
        writer.close()
    assert (torch.autograd.backward, dataloader._BaseDataLoaderIter.__next__,
            torch.optim.Optimizer.__init__, np.random.seed) == before
    assert not torch.nn.modules.module._global_forward_hooks
    assert not sys.modules["torch.optim.optimizer"]._global_optimizer_pre_hooks
    records = read_trace(str(tmp_path / "t.trace"))
    header = records[0]
    assert header["names"] == ["opt0.weight", "opt0.bias", "opt1.1.weight", "opt1.1.bias", "opt2.group0.0"]
    assert [(o["index"], o["class"]) for o in header["optimizers"]] == [(0, "SGD"), (1, "Adam"), (2, "SGD")]
    steps = [r for r in records if r["type"] == "step"]
    assert [r["optimizer"] for r in steps] == [0, 1, 2, 0, 1, 2]  # a step is one optimizer step
    assert {e[0] for e in steps[0]["modules"]} == {"opt0", "opt1", "opt1.0", "opt1.1"}
    assert steps[0]["params"][2] != steps[1]["params"][2]  # opt1's step moved its weight


def test_os_seeded_global_generators_count_once_the_script_seeds_them(tmp_path):
    """Python's and NumPy's global generators start from OS entropy: compared only once the
    script seeds them, and drawn from without a seed they are an escape of the seed."""
    import random

    import numpy as np
    import torch

    from audit.probes.run.rng_escape import read_log
    from audit.probes.script.tracer import ScriptTracer
    from audit.probes.run.trace import TraceWriter, read_trace

    log = str(tmp_path / "escapes")
    writer = TraceWriter(str(tmp_path / "t.trace"))
    tracer = ScriptTracer(writer, 100, escape_log=log)
    tracer.install()
    try:
        w = torch.zeros(2, requires_grad=True)
        opt = torch.optim.SGD([w], lr=0.1)
        for step in range(3):
            if step == 1:
                np.random.seed(5)
                random.random()  # Python's global generator, never seeded
            (w * np.random.rand()).sum().backward()
            opt.step()
    finally:
        tracer.uninstall()
        writer.close()
    steps = [r for r in read_trace(str(tmp_path / "t.trace")) if r["type"] == "step"]
    assert [sorted(r["rng"]) for r in steps] == [["torch_cpu"], ["numpy", "torch_cpu"],
                                                 ["numpy", "torch_cpu"]]
    # NumPy was drawn from at step 0 before it was seeded, Python's random at step 1.
    assert sorted(e["kind"] for e in read_log(log)) == ["numpy.random.seed(not called)",
                                                       "random.seed(not called)"]
