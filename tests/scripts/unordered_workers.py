"""Loading with three workers and in_order=False, so a slow sample does not hold up the
others (batches arrive in the order the workers finish). --in-order keeps the sampler's order."""
import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


class Squares(Dataset):
    def __init__(self, n=96):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 6, generator=g)
        self.y = (self.x.pow(2).sum(1) > 6).long()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--in-order", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    loader = DataLoader(Squares(), batch_size=8, shuffle=True, num_workers=3,
                        in_order=args.in_order)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for epoch in range(2):
        for x, y in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()


if __name__ == "__main__":
    main()
