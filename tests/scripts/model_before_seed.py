"""A model built at import time, before main() seeds torch: its initial weights are not seeded."""
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(10, 32), nn.ReLU())
        self.head = nn.Linear(32, 2)

    def forward(self, x):
        return self.head(self.body(x))


model = Net()


def main(seed=0):
    torch.manual_seed(seed)
    features = torch.randn(64, 10)
    labels = (features[:, 1] > 0).long()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(8):
        xb, yb = features[step * 8:(step + 1) * 8], labels[step * 8:(step + 1) * 8]
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()


if __name__ == "__main__":
    main()
