"""The oldest tutorial style: weights as plain tensors, the update by hand under no_grad."""
import torch

torch.manual_seed(0)
x = torch.linspace(-3, 3, 200).unsqueeze(1)
y = torch.sin(x)
w1 = torch.randn(1, 32, requires_grad=True)
b1 = torch.zeros(32, requires_grad=True)
w2 = torch.randn(32, 1, requires_grad=True)
learning_rate = 1e-3
for t in range(50):
    y_pred = torch.tanh(x @ w1 + b1) @ w2
    loss = (y_pred - y).pow(2).sum()
    loss.backward()
    with torch.no_grad():
        for w in (w1, b1, w2):
            w -= learning_rate * w.grad
            w.grad = None
print(f"loss {loss.item():.3f}")
