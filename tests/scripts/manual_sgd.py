"""A small language-model-style loop that updates its weights by hand, as older tutorials and
pytorch/examples' word_language_model do: no torch.optim, `p.data.add_(p.grad, alpha=-lr)`.
The training order comes from NumPy's generator, seeded from --shuffle-seed (unseeded when
the flag is left out)."""
import argparse

import numpy as np
import torch
from torch import nn


class TinyLM(nn.Module):
    def __init__(self, vocab=20, hidden=16):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.rnn = nn.GRU(hidden, hidden, batch_first=True)
        self.decoder = nn.Linear(hidden, vocab)

    def forward(self, tokens):
        out, _ = self.rnn(self.embed(tokens))
        return self.decoder(out)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--shuffle-seed", type=int, default=None)
    args = parser.parse_args()

    torch.manual_seed(0)
    corpus = torch.randint(0, 20, (64, 9))
    model = TinyLM()
    criterion = nn.CrossEntropyLoss()
    rng = np.random.default_rng(args.shuffle_seed)
    for epoch in range(args.epochs):
        order = rng.permutation(len(corpus))
        for start in range(0, len(corpus), 16):
            batch = corpus[torch.as_tensor(order[start:start + 16])]
            inputs, targets = batch[:, :-1], batch[:, 1:]
            model.zero_grad()
            output = model(inputs)
            loss = criterion(output.reshape(-1, 20), targets.reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            for p in model.parameters():
                p.data.add_(p.grad, alpha=-args.lr)
        print(f"epoch {epoch}: loss {loss.item():.3f}")


if __name__ == "__main__":
    main()
