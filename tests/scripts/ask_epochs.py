"""Asks how many epochs to train for before it starts (input()), as small course scripts do."""
import torch
from torch import nn

epochs = int(input("How many epochs? "))
torch.manual_seed(0)
x, y = torch.randn(32, 5), torch.randn(32, 1)
model = nn.Linear(5, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
for epoch in range(epochs):
    optimizer.zero_grad()
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    optimizer.step()
print(f"{epochs} epochs, loss {loss.item():.4f}")
