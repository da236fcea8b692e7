"""A tutorial-style MLP script with a ``--seed``: ``--bn`` gives a BatchNorm net whose init
schemes all train alike (within seed noise); ``--scale 0.2`` shrinks the model's own init so it
learns clearly slower than Xavier's (the layers stay healthy: two hidden layers only)."""
import argparse

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--scale", type=float, default=1.0)
parser.add_argument("--bn", action="store_true")
parser.add_argument("--width", type=int, default=64)
parser.add_argument("--lr", type=float, default=0.1)
args = parser.parse_args()

torch.manual_seed(args.seed)
layers, features = [], 32
for _ in range(2 if not args.bn else 3):
    layers += [nn.Linear(features, args.width)]
    layers += [nn.BatchNorm1d(args.width)] if args.bn else []
    layers += [nn.ReLU()]
    features = args.width
model = nn.Sequential(*layers, nn.Linear(features, 10))
with torch.no_grad():
    for p in model.parameters():
        p.mul_(args.scale)
teacher = torch.randn(32, 10, generator=torch.Generator().manual_seed(1234))
x = torch.randn(320, 32)
y = (x @ teacher).argmax(1)
optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
for i in range(0, 320, 64):
    optimizer.zero_grad()
    loss = nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64])
    loss.backward()
    optimizer.step()
print(f"loss {loss.item():.3f}")
