"""Distributed targets for ``audit determinism --nproc 2``: a clean DDP trainer, and one planted
fault each (``fault=...``): a buffer each rank updates without broadcast, a parameter without
gradient changed locally, per-rank unseeded dropout applied to the weights, and a rank that
crashes mid-training. ``fault="plain"`` is no fault: the plain DataLoader, whose
DistributedSampler the audit's own loop tells the epoch (the target has no loop)."""
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler


class EpochLoader:
    """Each pass over the data is an epoch: the sampler is told so by the data itself."""

    def __init__(self, loader):
        self.loader, self.epoch = loader, 0

    def __iter__(self):
        self.loader.sampler.set_epoch(self.epoch)
        self.epoch += 1
        return iter(self.loader)


class LocalAverage(nn.Module):
    """Keeps a running mean of its inputs in a buffer, from each rank's own batches."""

    def __init__(self, width):
        super().__init__()
        self.register_buffer("mean", torch.zeros(width))

    def forward(self, x):
        if self.training:
            with torch.no_grad():
                self.mean.mul_(0.9).add_(0.1 * x.mean(0))  # PLANTED (with broadcast off)
        return x - self.mean


class LocalScale(nn.Module):
    """A frozen parameter that each rank nudges from its own batch."""

    def __init__(self, width):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(width), requires_grad=False)

    def forward(self, x):
        if self.training:
            with torch.no_grad():
                self.scale.mul_(1 + 0.01 * x.mean(0).tanh())  # PLANTED
        return x * self.scale


class WeightDropout(nn.Linear):
    """DropConnect written to the weights in place, from an unseeded per-rank generator."""

    def __init__(self, *args):
        super().__init__(*args)
        self.gen = torch.Generator()
        self.gen.seed()  # PLANTED: each rank (and run) draws its own masks

    def forward(self, x):
        if self.training:
            with torch.no_grad():
                keep = (torch.rand(self.weight.shape, generator=self.gen) > 0.1).float()
                self.weight.mul_(keep)
        return super().forward(x)


def _model(fault):
    middle = {"buffer": LocalAverage(16), "param": LocalScale(16)}.get(fault, nn.BatchNorm1d(16))
    first = WeightDropout(8, 16) if fault == "dropout" else nn.Linear(8, 16)
    return nn.Sequential(first, middle, nn.ReLU(), nn.Linear(16, 3))


def _crash_step(model, batch, loss):
    inputs, targets = batch
    _crash_step.calls = getattr(_crash_step, "calls", 0) + 1
    if dist.get_rank() == 1 and _crash_step.calls == 3:
        raise RuntimeError("planted crash on rank 1")
    return loss(model(inputs), targets)


def build(fault=None, samples=32, batch=4):
    assert dist.is_initialized(), "the process group must exist before the target is called"
    g = torch.Generator().manual_seed(3)
    data = TensorDataset(torch.randn(samples, 8, generator=g), torch.randint(0, 3, (samples,), generator=g))
    sampler = DistributedSampler(data, shuffle=True, seed=0)
    loader = DataLoader(data, batch_size=batch, sampler=sampler)
    model = _model(fault)
    if fault == "buffer":
        model = DDP(model, broadcast_buffers=False)
    target = {"model": model, "data": loader if fault == "plain" else EpochLoader(loader)}
    if fault == "crash":
        target["step"] = _crash_step
    return target
