"""Classifying animals from feature vectors, the tensors sliced in the loop (no DataLoader).
The label ids come from the set of species names; --sorted gives them in sorted order."""
import argparse

import torch
from torch import nn

SPECIES = ["cat", "dog", "bird", "fish", "frog", "horse"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sorted", action="store_true")
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()

    torch.manual_seed(0)
    names = [SPECIES[int(i)] for i in torch.randint(0, len(SPECIES), (96,))]
    features = torch.randn(96, 8)
    species = sorted(set(names)) if args.sorted else set(names)
    label_of = {name: i for i, name in enumerate(species)}
    labels = torch.tensor([label_of[n] for n in names])

    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, len(SPECIES)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    criterion = nn.CrossEntropyLoss()
    for step in range(args.steps):
        start = (step * 16) % len(names)
        x, y = features[start:start + 16], labels[start:start + 16]
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
    print(f"final loss {loss.item():.3f}")


if __name__ == "__main__":
    main()
