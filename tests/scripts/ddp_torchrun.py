"""DDP training written the way the PyTorch tutorials write it, for
``torchrun --nproc_per_node 2 ddp_torchrun.py``: the script makes its own process group (from
the environment torchrun sets) and its own DDP, and shards the data with a DistributedSampler.
``--fault buffer`` keeps a running mean per rank with DDP's buffer broadcast off;
``--fault epoch`` never tells the sampler the epoch."""
import argparse

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.optim as optim
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler


class RunningMean(nn.Module):
    """Centres its inputs with a running mean of the batches this rank sees."""

    def __init__(self, width):
        super().__init__()
        self.register_buffer("mean", torch.zeros(width))

    def forward(self, x):
        if self.training:
            with torch.no_grad():
                self.mean.mul_(0.9).add_(0.1 * x.mean(0))
        return x - self.mean


class ToyModel(nn.Module):
    def __init__(self, running_mean=False):
        super().__init__()
        self.net1 = nn.Linear(8, 16)
        self.norm = RunningMean(16) if running_mean else nn.BatchNorm1d(16)
        self.relu = nn.ReLU()
        self.net2 = nn.Linear(16, 3)

    def forward(self, x):
        return self.net2(self.relu(self.norm(self.net1(x))))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--fault", choices=["buffer", "epoch"], action="append", default=[])
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)

    g = torch.Generator().manual_seed(3)
    dataset = TensorDataset(torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g))
    sampler = DistributedSampler(dataset, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_size=4, sampler=sampler)

    model = ToyModel(running_mean="buffer" in args.fault)
    ddp_model = DDP(model, broadcast_buffers="buffer" not in args.fault)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = optim.SGD(ddp_model.parameters(), lr=0.1)

    for epoch in range(args.epochs):
        if "epoch" not in args.fault:
            sampler.set_epoch(epoch)
        for inputs, labels in loader:
            optimizer.zero_grad()
            loss = loss_fn(ddp_model(inputs), labels)
            loss.backward()
            optimizer.step()
        if rank == 0:
            print(f"epoch {epoch}: loss {loss.item():.4f}")

    dist.destroy_process_group()


if __name__ == "__main__":
    main()
