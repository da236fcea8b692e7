"""Planted pairs for ``audit diff``: ``build`` (variant "base") is the code before, and each
other variant one kind of change after it. ``diff_pairs.py:build,variant='rename'``."""
import os

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

SAMPLES, BATCH, LATE = 64, 8, 3


class Branches(nn.Module):
    """Three parallel layers summed: ``(a + b) + c``, or reassociated ``a + (b + c)``."""

    def __init__(self, assoc="left", noisy=False):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)
        self.assoc = assoc
        self.gen = torch.Generator() if noisy else None
        if noisy:
            self.gen.seed()  # PLANTED (variant noisy): OS entropy

    def forward(self, x):
        a, b, c = self.a(x), self.b(x), self.c(x)
        out = (a + b) + c if self.assoc == "left" else a + (b + c)
        if self.gen is not None:
            out = out + 1e-3 * torch.randn(out.shape, generator=self.gen)
        return out


class Net(nn.Module):
    """The model before (and after, for most variants)."""

    def __init__(self, act="relu", assoc="left", p=0.2, noisy=False):
        super().__init__()
        activation = nn.GELU(approximate="tanh") if act == "gelu" else nn.ReLU()
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(8, 16), activation)
        self.mix = Branches(assoc, noisy)
        self.drop = nn.Dropout(p)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.drop(self.mix(self.features(x))))


class Renamed(nn.Module):
    """The same layers, created in the same order, renamed and regrouped."""

    def __init__(self, assoc="left"):
        super().__init__()
        self.flat = nn.Flatten()
        self.embed = nn.Linear(8, 16)
        self.act = nn.ReLU()
        self.blocks = nn.ModuleDict({"mix": Branches(assoc)})
        self.dropout = nn.Dropout(0.2)
        self.classifier = nn.Linear(16, 3)

    def forward(self, x):
        x = self.act(self.embed(self.flat(x)))
        return self.classifier(self.dropout(self.blocks["mix"](x)))


def _stem(features, x):
    return features(x.flatten(1))


class Helper(nn.Module):
    """Forward code moved into a helper; the Flatten module dropped for ``.flatten(1)``."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
        self.mix = Branches()
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.drop(self.mix(_stem(self.features, x))))


def _data(shuffle_seed, clamp):
    """A shuffled loader whose sample at step LATE holds an outlier; ``clamp`` changes only it."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(SAMPLES, 2, 4, generator=g).clamp(-3, 3)
    y = torch.randint(0, 3, (SAMPLES,), generator=g)
    order = [i for batch in DataLoader(range(SAMPLES), batch_size=BATCH, shuffle=True,
                                       generator=torch.Generator().manual_seed(shuffle_seed))
             for i in batch.tolist()]
    x[order[LATE * BATCH], 0, 0] = 6.0  # the first sample of step LATE
    if clamp:
        x = x.clamp(-5, 5)
    return DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True,
                      generator=torch.Generator().manual_seed(shuffle_seed))


MODELS = {"rename": Renamed, "helper": Helper, "rename_reassoc": lambda: Renamed(assoc="right")}


def build(variant="base"):
    model = MODELS[variant]() if variant in MODELS else Net(
        act="gelu" if variant == "activation" else "relu",
        assoc="right" if variant == "reassoc" else "left",
        p=0.3 if variant == "dropout" else 0.2, noisy=variant == "noisy")
    if variant == "reinit":
        nn.init.xavier_uniform_(model.head.weight)
    lr = 0.05 if variant == "optimizer" else 0.1
    period = 5 if variant == "scheduler" else LATE
    smoothing = 0.1 if variant == "loss" else 0.0
    return {
        "model": model,
        "data": _data(2 if variant == "shuffle" else 1, clamp=variant == "late_transform"),
        "loss": nn.CrossEntropyLoss(label_smoothing=smoothing),
        "optimizer": lambda params: torch.optim.SGD(params, lr=lr, momentum=0.9),
        "scheduler": lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=period, gamma=0.5),
    }


def train(variant, steps):
    """Script mode's training loop (tests/scripts/diff_train.py): the script seeds itself."""
    torch.manual_seed(int(os.environ.get("DIFF_SEED", "0")))
    parts = build(variant)
    model, opt = parts["model"], parts["optimizer"](parts["model"].parameters())
    sched = parts["scheduler"](opt)
    done = 0
    while done < steps:
        for x, y in parts["data"]:
            opt.zero_grad()
            parts["loss"](model(x), y).backward()
            opt.step()
            sched.step()
            done += 1
            if done == steps:
                break
