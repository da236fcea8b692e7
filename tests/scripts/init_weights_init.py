"""A DCGAN-style custom init applied with model.apply that makes the activations explode."""
import torch
from torch import nn


def weights_init(m):
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, 0.0, 1.0)  # far too wide for 128 inputs
        nn.init.zeros_(m.bias)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                                  nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU())
        self.head = nn.Linear(128, 10)

    def forward(self, x):
        return self.head(self.body(x))


torch.manual_seed(1)
net = Net()
net.apply(weights_init)
opt = torch.optim.Adam(net.parameters(), lr=1e-3)
data = torch.randn(256, 128)
labels = torch.randint(0, 10, (256,))
for step in range(20):
    idx = torch.randint(0, 256, (32,))
    opt.zero_grad()
    loss = nn.functional.cross_entropy(net(data[idx]), labels[idx])
    loss.backward()
    opt.step()
