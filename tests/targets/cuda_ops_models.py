"""Small models for the CUDA op scan: each uses one op PyTorch documents as nondeterministic on
CUDA (or none), inside a named module. ``build_NAME()`` returns a target mapping."""
import torch
import torch.nn.functional as F
from torch import nn


def _images(n=2, channels=3, side=8, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, channels, side, side, generator=g),
             torch.randint(0, classes, (4,), generator=g)) for _ in range(n)]


def _indices(n=2, vocab=10, length=8, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, vocab, (4, length), generator=g),
             torch.randint(0, classes, (4,), generator=g)) for _ in range(n)]


class Upsample(nn.Module):
    """Bilinear interpolate called functionally inside a block of its own."""

    def forward(self, x):
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class Interp(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.up = Upsample()
        self.head = nn.Linear(4 * 16 * 16, 3)

    def forward(self, x):
        return self.head(self.up(self.stem(x)).flatten(1))


class ParentInterp(nn.Module):
    """The parent calls interpolate itself, right before a child conv: the interpolate belongs
    to the parent (the model itself), not to the conv that consumes its output."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4 * 16 * 16, 3)

    def forward(self, x):
        h = F.interpolate(self.stem(x), scale_factor=2, mode="bilinear", align_corners=False)
        return self.head(self.conv(h).flatten(1))


class Accumulate(nn.Module):
    """index_add_ or scatter_add_ of features into buckets (forward ops on CUDA atomics)."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.proj = nn.Linear(8, 8)

    def forward(self, x):
        h = self.proj(x)
        buckets = torch.zeros(4, 8, dtype=h.dtype, device=h.device)
        index = torch.arange(h.shape[0], device=h.device) % 4
        if self.how == "index_add":
            return buckets.index_add_(0, index, h)
        return buckets.scatter_add_(0, index[:, None].expand_as(h), h)


class Pooled(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.acc = Accumulate(how)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.acc(x).sum(0, keepdim=True).expand(x.shape[0], -1))


class Bag(nn.Module):
    def __init__(self):
        super().__init__()
        self.bag = nn.EmbeddingBag(10, 6, mode="max")
        self.head = nn.Linear(6, 3)

    def forward(self, idx):
        return self.head(self.bag(idx))


class Padded(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.pad = nn.ReflectionPad2d(1)
        self.head = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        return self.head(self.pad(self.stem(x)).flatten(1))


class Adaptive(nn.Module):
    def __init__(self, size):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(size)
        self.head = nn.LazyLinear(3)

    def forward(self, x):
        return self.head(self.pool(self.stem(x)).flatten(1))


class Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                      nn.MaxPool2d(2))
        self.head = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class Unpool(nn.Module):
    """MaxUnpool2d has no deterministic implementation on any device: PyTorch reports it on
    the CPU too, which lets the confirming pass be tested without a GPU."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2)
        self.head = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        h, where = self.pool(self.stem(x))
        return self.head(self.unpool(h, where).flatten(1))


def build_interpolate():
    return {"model": Interp(), "data": _images()}


def build_parent_interpolate():
    return {"model": ParentInterp(), "data": _images()}


def build_index_add():
    return {"model": Pooled("index_add"), "data": [(torch.randn(6, 8), torch.randint(0, 3, (6,)))]}


def build_scatter_add():
    return {"model": Pooled("scatter_add"), "data": [(torch.randn(6, 8), torch.randint(0, 3, (6,)))]}


def build_embedding_bag():
    return {"model": Bag(), "data": _indices()}


def build_reflection_pad():
    return {"model": Padded(), "data": _images()}


def build_adaptive_pool():
    return {"model": Adaptive((3, 3)), "data": _images()}


def build_global_pool():
    """AdaptiveAvgPool2d(1) is computed as a mean: nothing to report."""
    return {"model": Adaptive(1), "data": _images()}


def build_plain():
    return {"model": Plain(), "data": _images()}


def build_unpool():
    return {"model": Unpool(), "data": _images()}
