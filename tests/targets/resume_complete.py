"""A complete checkpoint: dropout, a shuffled loader whose order depends only on (seed, epoch),
a scheduler, momentum; save/load keep model, optimizer, scheduler, RNG states and the epoch."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from resume_common import load_pieces, save_pieces


class EpochLoader:
    """Shuffles with its own generator, reseeded from (seed, epoch) when a pass opens."""

    def __init__(self, dataset, seed=0):
        self.gen = torch.Generator()
        self.loader = DataLoader(dataset, batch_size=8, shuffle=True, generator=self.gen)
        self.seed, self.next_epoch, self.epoch = seed, 0, None

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        self.epoch, self.next_epoch = self.next_epoch, self.next_epoch + 1
        self.gen.manual_seed(self.seed + self.epoch)
        return iter(self.loader)


def save(path, objects):
    save_pieces(path, objects, extra={"epoch": objects["data"].epoch})


def load(path, objects):
    checkpoint = load_pieces(path, objects)
    objects["data"].next_epoch = checkpoint["epoch"]


def build():
    g = torch.Generator().manual_seed(0)
    dataset = TensorDataset(torch.randn(32, 8, generator=g), torch.randint(0, 3, (32,), generator=g))
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 3))
    return {"model": model, "data": EpochLoader(dataset),
            "optimizer": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
            "scheduler": lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5),
            "save": save, "load": load}
