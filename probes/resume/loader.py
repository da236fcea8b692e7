"""Where a DataLoader's pass stands, and putting a resumed pass back there (``audit resume``).

A ``torch.utils.data.DataLoader`` draws two things when a pass starts, from its ``generator``
or else from torch's global RNG: the base seed of its worker processes, and (for a shuffling
sampler) the order of the pass. An uninterrupted run drew both at the start of the epoch; a
resumed run that opens a fresh pass draws them again, from whatever state the RNG has then.

:class:`PassRecorder` notes, for every pass of the uninterrupted run (which saves the checkpoint),
the RNG state the pass
started from and the order its sampler gave. :func:`resumed_pass` opens the resumed pass with
what the user's checkpoint left, or, for the tool's own knobs, with the recorded order
(``data_position``) and/or the recorded worker seed (``worker_seeds``); with either knob the
draws the fresh pass made are taken back once the pass stands at the resumed batch, as if the
pass had been opened back at the start of the epoch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional, TypeGuard

import torch
from torch.utils.data import DataLoader, IterableDataset

DATA_KNOBS = ("data_position", "worker_seeds")


@dataclass
class PassRecord:
    """How one pass over a DataLoader started: the seed source's state and the order."""

    epoch: int
    seed_state: torch.Tensor  # state of the generator the pass drew its seeds from
    order: Optional[list[Any]] = None  # what the index sampler yielded, whole pass


def is_loader(data: Any) -> TypeGuard[DataLoader[Any]]:
    """A ``DataLoader`` over a map-style dataset (an iterable dataset has no order to keep)."""
    return isinstance(data, DataLoader) and not isinstance(data.dataset, IterableDataset)


def uses_workers(data: Any) -> bool:
    return is_loader(data) and data.num_workers > 0


def seed_source(loader: DataLoader[Any]) -> torch.Generator:
    """The generator a pass draws its worker base seed (and a default sampler's seed) from."""
    return loader.generator if loader.generator is not None else torch.default_generator


def _after_one_draw(state: torch.Tensor) -> torch.Tensor:
    """``state`` advanced by the one int64 draw a DataLoader pass makes for its base seed."""
    gen = torch.Generator()
    gen.set_state(state)
    torch.empty((), dtype=torch.int64).random_(generator=gen)
    return gen.get_state()


class _IndexSampler:
    """Stands in for a loader's (batch) sampler for one pass: yields ``order`` when given, else
    the original's indices, taken whole at the first request (the moment the original would
    have drawn its seed). ``before_first`` runs just before that."""

    def __init__(self, original: Any, order: Optional[list[Any]] = None, before_first: Any = None) -> None:
        self.original, self.order, self.before_first = original, order, before_first
        self.seen: Optional[list[Any]] = None

    def __len__(self) -> int:
        return len(self.original)

    def __iter__(self) -> Iterator[Any]:
        if self.before_first is not None:
            self.before_first()
        self.seen = list(self.order) if self.order is not None else list(iter(self.original))
        yield from self.seen


def _open(loader: DataLoader[Any], sampler: _IndexSampler) -> Iterator[Any]:
    """``iter(loader)`` with ``sampler`` standing in for its index sampler during the call."""
    attr = "batch_sampler" if loader.batch_sampler is not None else "sampler"
    original = getattr(loader, attr)
    object.__setattr__(loader, attr, sampler)  # DataLoader forbids plain assignment
    try:
        return iter(loader)
    finally:
        object.__setattr__(loader, attr, original)


class PassRecorder:
    """Opens each pass of the uninterrupted run and remembers how the latest one started."""

    def __init__(self, data: Any):
        self.data = data
        self.latest: Optional[PassRecord] = None
        self._sampler: Optional[_IndexSampler] = None

    def open_pass(self, epoch: int) -> Iterator[Any]:
        if not is_loader(self.data):
            return iter(self.data)
        attr = "batch_sampler" if self.data.batch_sampler is not None else "sampler"
        self._sampler = _IndexSampler(getattr(self.data, attr))
        self.latest = PassRecord(epoch, seed_source(self.data).get_state())
        return _open(self.data, self._sampler)

    def record(self) -> Optional[PassRecord]:
        """The pass in progress, with the order its sampler gave (None for plain data)."""
        if self.latest is not None and self._sampler is not None:
            self.latest.order = self._sampler.seen
        return self.latest


def resumed_pass(loader: DataLoader[Any], skip: int, knobs: tuple[str, ...],
                 record: Optional[PassRecord]) -> Iterator[Any]:
    """The resumed pass over ``loader`` (its first ``skip`` batches are discarded by the loop),
    opened with the tool's data knobs in ``knobs`` applied from ``record``."""
    wanted = [k for k in knobs if k in DATA_KNOBS] if record is not None else []
    source = seed_source(loader)
    own = source.get_state()
    if not wanted:
        return iter(loader)
    assert record is not None  # wanted is empty without a record
    attr = "batch_sampler" if loader.batch_sampler is not None else "sampler"
    order = record.order if "data_position" in wanted else None
    before = None
    if "worker_seeds" in wanted:
        source.set_state(record.seed_state)  # the base seed the uninterrupted pass drew
        own_next = _after_one_draw(own)
        before = lambda: source.set_state(own_next)  # the sampler draws as this run would
    it = _open(loader, _IndexSampler(getattr(loader, attr), order, before))
    return _rewound(it, skip, source, own)


def _rewound(it: Iterator[Any], skip: int, source: torch.Generator, state: torch.Tensor) -> Iterator[Any]:
    """Yield from ``it``; once ``skip`` batches are out, put ``source`` back to ``state``."""
    for i, batch in enumerate(it):
        if i == skip:
            source.set_state(state)
        yield batch
