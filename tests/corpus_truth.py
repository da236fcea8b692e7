"""The plain-run truth for the corpus:
``python corpus_truth.py OUT STEPS [--seed S] SCRIPT ARGS...`` runs SCRIPT as
``python SCRIPT ARGS...`` would (``__main__``, its argv, its folder first on ``sys.path``) and
writes to OUT, as JSON, what each backward pass saw: the fingerprints of the
parameters of every module that ran a forward pass (before the pass's update), of the loss and
of the gradients. It stops after STEPS optimizer steps (or STEPS backward passes in a script
that updates its weights by hand) and adds the parameters' fingerprint at that point.

Independent of the audit on purpose: it is the reference the audit's answers are held to.
``--seed S`` seeds Python's ``random``, NumPy's global generator and torch before the script
starts, which tells whether an unseeded global generator is what parts two plain runs.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import runpy
import sys

import numpy as np
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook


class Truth:
    """Fingerprints per backward pass; stops the script after ``steps`` steps."""

    def __init__(self, out: str, steps: int) -> None:
        self.out, self.steps = out, steps
        self.modules: dict[int, torch.nn.Module] = {}
        self.records: list[dict[str, str]] = []
        self.optimizer_steps = 0

    def params(self) -> list[torch.Tensor]:
        seen: dict[int, torch.Tensor] = {}
        for module in self.modules.values():
            for p in module.parameters(recurse=False):
                seen.setdefault(id(p), p)
        return list(seen.values())

    def seen(self, module: torch.nn.Module, args: object) -> None:
        self.modules.setdefault(id(module), module)

    def backward_done(self, loss: torch.Tensor) -> None:
        params = self.params()
        self.records.append({"params": digest(params), "loss": digest([loss]),
                             "grads": digest([p.grad for p in params if p.grad is not None])})
        if self.optimizer_steps == 0 and len(self.records) >= self.steps and manual():
            self.finish("stopped")

    def stepped(self, optimizer: object, args: object, kwargs: object) -> None:
        self.optimizer_steps += 1
        if self.optimizer_steps >= self.steps:
            self.finish("stopped")

    def finish(self, status: str) -> None:
        doc = {"status": status, "records": self.records, "final": digest(self.params()),
               "optimizer_steps": self.optimizer_steps}
        with open(self.out, "w", encoding="utf-8") as fh:
            json.dump(doc, fh)
        if status == "stopped":
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)


def manual() -> bool:
    """No optimizer was made: the script updates its weights by hand."""
    return not any(isinstance(o, torch.optim.Optimizer) for o in OPTIMIZERS)


OPTIMIZERS: list[object] = []


def digest(tensors: list[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def install(truth: Truth) -> None:
    torch.nn.modules.module.register_module_forward_pre_hook(truth.seen)
    register_optimizer_step_post_hook(truth.stepped)
    original_init = torch.optim.Optimizer.__init__

    def init(self: torch.optim.Optimizer, *args: object, **kwargs: object) -> None:
        OPTIMIZERS.append(self)
        original_init(self, *args, **kwargs)

    torch.optim.Optimizer.__init__ = init  # type: ignore[method-assign]
    original_backward = torch.autograd.backward

    def backward(tensors: torch.Tensor, *args: object, **kwargs: object) -> None:
        original_backward(tensors, *args, **kwargs)
        truth.backward_done(tensors if isinstance(tensors, torch.Tensor) else tensors[0])

    torch.autograd.backward = backward  # Tensor.backward calls torch.autograd.backward


def main(argv: list[str]) -> None:
    out, steps, rest = argv[0], int(argv[1]), argv[2:]
    if rest[0] == "--seed":
        seed, rest = int(rest[1]), rest[2:]
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
    script = os.path.abspath(rest[0])
    sys.argv = rest
    sys.path[0] = os.path.dirname(script)
    truth = Truth(out, steps)
    install(truth)
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        truth.finish("ended")


def first_difference(a: dict, b: dict) -> dict | None:
    """Where two truths part: the backward pass and what differed (``params`` at pass 0 is the
    initial parameters; later, the update before it), or ``final`` for the last update."""
    for i, (ra, rb) in enumerate(zip(a["records"], b["records"])):
        for key in ("params", "loss", "grads"):
            if ra[key] != rb[key]:
                return {"pass": i, "part": key}
    if len(a["records"]) != len(b["records"]):
        return {"pass": min(len(a["records"]), len(b["records"])), "part": "length"}
    if a["final"] != b["final"]:
        return {"pass": len(a["records"]), "part": "final"}
    return None


if __name__ == "__main__":
    main(sys.argv[1:])
