"""A user project whose own packages are called `reports` and `probes`, as many are."""
import sys

import probes
import reports
import torch
from torch import nn

assert reports.OWNER == "user" and probes.OWNER == "user", "the audit shadowed the user's packages"


def build():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 4, generator=g), torch.randint(0, 2, (8,), generator=g)) for _ in range(3)]
    return {"model": model, "data": data}


if __name__ == "__main__":
    setup = build()
    model = setup["model"]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for inputs, targets in setup["data"]:
        opt.zero_grad()
        nn.functional.cross_entropy(model(inputs), targets).backward()
        opt.step()
    sys.exit(0)
