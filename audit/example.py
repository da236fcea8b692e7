"""The built-in example: the CIFAR-style simple CNN of the course, on synthetic CIFAR-like data.

Three conv+BN+ReLU+pool blocks, a 512-unit hidden layer with dropout 0.5, ten classes. The
data are made here (no downloads): 32x32 colour images whose class sets a coloured blob's
position and hue, through a shuffling DataLoader with torchvision augmentation, as the
course's training script does. ``audit determinism`` and ``audit init`` run it when no target
is given.
"""
from __future__ import annotations

from typing import Any
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2


class SimpleCNN(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(128 * 4 * 4, 512), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class SyntheticCIFAR(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """CIFAR-shaped images with a learnable signal; sample ``i`` is always the same image."""

    def __init__(self, size: int = 1024, num_classes: int = 10, seed: int = 1234):
        gen = torch.Generator().manual_seed(seed)
        self.targets = torch.randint(0, num_classes, (size,), generator=gen)
        noise = torch.rand((size, 3, 32, 32), generator=gen)
        yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
        angle = self.targets.float() * (6.2832 / num_classes)
        cy, cx = 16 + 9 * torch.sin(angle), 16 + 9 * torch.cos(angle)
        blob = torch.exp(-((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2) / 18.0)
        hue = torch.stack([torch.cos(angle), torch.sin(angle), -torch.cos(angle)], 1)
        self.images = (0.5 * noise + 0.5 * blob[:, None] * (0.5 + 0.5 * hue[:, :, None, None]))
        self.transform = v2.Compose([
            v2.RandomCrop(32, padding=4),
            v2.RandomHorizontalFlip(),
            v2.Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
        ])

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[index]), self.targets[index]


def build() -> dict[str, Any]:
    """The target: model, a shuffled DataLoader with augmentation, Adam, cross-entropy."""
    model = SimpleCNN()
    loader = DataLoader(SyntheticCIFAR(), batch_size=64, shuffle=True, num_workers=0)
    return {
        "model": model,
        "data": loader,
        "loss": nn.CrossEntropyLoss(),
        "optimizer": lambda params: torch.optim.Adam(params, lr=1e-3),
    }
