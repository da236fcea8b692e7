"""Training with weight noise: after each update, a little Gaussian noise is added to every
weight (a regularizer some papers use). The noise generator is seeded from --noise-seed; left
out, it is seeded from the operating system."""
import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--noise", type=float, default=1e-3)
    parser.add_argument("--noise-seed", type=int, default=None)
    args = parser.parse_args()

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(96, 12), torch.randint(0, 4, (96,)))
    loader = DataLoader(data, batch_size=16, shuffle=True)
    model = nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    noise = torch.Generator()
    if args.noise_seed is None:
        noise.seed()
    else:
        noise.manual_seed(args.noise_seed)
    for epoch in range(3):
        for inputs, labels in loader:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(inputs), labels)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn(p.shape, generator=noise) * args.noise)
        print(f"epoch {epoch}: loss {loss.item():.3f}")


if __name__ == "__main__":
    main()
