"""Deterministic although busy: shuffling, worker processes, torchvision augmentation, dropout,
and NumPy's global RNG inside workers (PyTorch seeds it per worker). A false alarm is a bug."""
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2


class Images(Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(3)
        self.x = torch.rand(64, 3, 12, 12, generator=g)
        self.y = torch.randint(0, 4, (64,), generator=g)
        self.aug = v2.Compose([v2.RandomCrop(12, padding=2), v2.RandomHorizontalFlip()])

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        noise = torch.from_numpy(np.random.normal(0, 0.01, (3, 12, 12)).astype("float32"))
        return self.aug(self.x[i]) + noise, self.y[i]


def build():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Dropout(0.3),
                          nn.Linear(8 * 10 * 10, 4))
    loader = DataLoader(Images(), batch_size=8, shuffle=True, num_workers=2)
    return {"model": model, "data": loader}
