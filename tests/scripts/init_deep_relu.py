"""A tutorial-style script: a deep ReLU MLP without normalization under PyTorch's default
init, whose signal shrinks layer after layer."""
import argparse

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--depth", type=int, default=16)
args = parser.parse_args()

torch.manual_seed(0)
layers = [nn.Linear(32, 64), nn.ReLU()]
for _ in range(args.depth):
    layers += [nn.Linear(64, 64), nn.ReLU()]
model = nn.Sequential(*layers, nn.Linear(64, 4))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
x = torch.randn(512, 32)
y = torch.randint(0, 4, (512,))
for epoch in range(2):
    for i in range(0, 512, 64):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64])
        loss.backward()
        optimizer.step()
    print(f"epoch {epoch}: {loss.item():.3f}")
