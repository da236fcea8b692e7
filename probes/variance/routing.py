"""Routing each source's seed to the randomness it owns, inside one training run.

* ``init``: Python's ``random``, NumPy's global RNG and torch are seeded with the init seed just
  before the target is called, so everything the target draws while it builds (the model's
  parameters first of all) follows that seed.
* ``data``: the sampler's own generator (``RandomSampler`` and friends get
  ``generator = torch.Generator().manual_seed(data seed)``; a ``DistributedSampler`` its
  ``seed``), so the order of samples follows the data seed alone.
* ``augment``: while batches are fetched, the global generators (torch, NumPy, Python) run on
  a stream of their own, seeded by the augment seed; DataLoader workers are seeded from the
  loader's ``generator`` (``base_seed + worker_id``), which is set from the augment seed too.
* ``dropout``: during the forward pass, backward pass and optimizer step, the global
  generators (CUDA's too) run on a second stream, seeded by the dropout seed.

:class:`Streams` swaps the global generator states between the two streams around each batch
fetch; :func:`route_data` points a DataLoader's sampler and worker seeds at their seeds and
says when it cannot.
"""
from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch

from audit.probes.results.variance import Routing
from audit.probes.run.seeding import seed_all

_TAGS = {"augment": 1, "dropout": 2, "evaluate": 3, "data": 4}


def derived_seed(seed: int, source: str) -> int:
    """A 63-bit seed for ``source`` from ``seed``, so equal seeds of two sources still give
    unrelated streams."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, _TAGS[source]]).generate_state(2)
    return int(state[0]) << 31 ^ int(state[1])


def _capture() -> tuple[Any, ...]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda, np.random.get_state(), random.getstate()


def _restore(state: tuple[Any, ...]) -> None:
    cpu, cuda, numpy_state, python_state = state
    torch.set_rng_state(cpu)
    if cuda is not None and torch.cuda.is_initialized():
        torch.cuda.set_rng_state_all(cuda)
    np.random.set_state(numpy_state)
    random.setstate(python_state)


class Streams:
    """Named states of the global generators; :meth:`use` runs a block on one of them."""

    def __init__(self, seeds: dict[str, Any]):
        outer = _capture()
        self._states = {}
        try:
            for name, seed in seeds.items():
                seed_all(derived_seed(seed, name))
                self._states[name] = _capture()
        finally:
            _restore(outer)

    @contextmanager
    def use(self, name: str) -> Iterator[None]:
        _restore(self._states[name])
        try:
            yield
        finally:
            self._states[name] = _capture()


def _sampler(loader: Any) -> Any:
    batch_sampler = getattr(loader, "batch_sampler", None)
    inner = getattr(batch_sampler, "sampler", None)
    return inner if inner is not None else getattr(loader, "sampler", None)


def _route_sampler(sampler: Any, data_seed: int) -> Routing:
    name = type(sampler).__name__
    if isinstance(sampler, torch.utils.data.SequentialSampler):
        return Routing("data", "a SequentialSampler: the order is fixed, nothing to vary")
    if isinstance(sampler, torch.utils.data.DistributedSampler):
        sampler.seed = derived_seed(data_seed, "data") & 0x7FFFFFFF
        return Routing("data", "the DistributedSampler's seed")
    if hasattr(sampler, "generator"):
        sampler.generator = torch.Generator().manual_seed(derived_seed(data_seed, "data"))
        return Routing("data", f"the {name}'s generator")
    return Routing("data", f"not reachable: the {name} has no generator the tool can set",
                   separable=False,
                   note=f"its order comes from wherever the {name} draws it (the global "
                        "generators while batches load: the augment stream), so the data "
                        "and augment shares cannot be told apart; give the sampler a "
                        "'generator' attribute")


def route_data(data: Any, data_seed: int, augment_seed: int) -> list[Any]:
    """Point the target's data at the data and augment seeds; the routing of both sources."""
    augment_main = ("torch, NumPy and Python global generators on their own stream while "
                    "batches are fetched")
    if not isinstance(data, torch.utils.data.DataLoader):
        return [Routing("data", f"a fixed {type(data).__name__} of batches: the order is "
                                "fixed, nothing to vary"),
                Routing("augment", augment_main)]
    if isinstance(data.dataset, torch.utils.data.IterableDataset):
        routes = [Routing("data", "an IterableDataset: its order is what the dataset yields",
                          separable=False,
                          note="any shuffling it does draws from the global generators while "
                               "batches load (the augment stream) or from its own; data and "
                               "augment cannot be told apart")]
    else:
        routes = [_route_sampler(_sampler(data), data_seed)]
    data.generator = torch.Generator().manual_seed(derived_seed(augment_seed, "augment"))
    how = augment_main
    if data.num_workers > 0:
        how += (f"; {data.num_workers} DataLoader workers seeded from the loader's generator "
                "(base_seed + worker_id)")
    routes.append(Routing("augment", how))
    return routes


def fixed_routes() -> list[Any]:
    """The routing of the two sources that do not depend on the data."""
    return [Routing("init", "Python, NumPy and torch seeded with the init seed just before the "
                            "target builds the model (everything the target draws while "
                            "building follows it)"),
            Routing("dropout", "torch (CPU and CUDA), NumPy and Python global generators on "
                               "their own stream during forward, backward and the optimizer step")]
