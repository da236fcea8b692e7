"""Bitwise, position-sensitive tensor fingerprints, computed on the tensor's own device.

A tensor's bytes are read as 32-bit words (16- or 8-bit for narrower dtypes), widened to
int64, and summed with position weights ``w_i = (2i + 1) * C mod 2**64`` (``C`` odd):

* changing one element changes its word by ``d``, with ``0 < |d| < 2**32``; the sum moves by
  ``d * w_i``, never 0 mod 2**64 because ``w_i`` is odd;
* swapping two unequal elements moves it by ``(x_i - x_j)(w_j - w_i)``; the 2-adic valuation
  of the first factor is < 32 and of ``w_j - w_i = 2(j - i)C`` is <= 1 + log2(n), so the product
  is never 0 mod 2**64 for tensors of fewer than 2**31 words.

So a 1-ULP change of any element and a swap of two unequal elements both always change the
fingerprint (unlike an xor of element hashes, which cannot see a swap). On the CPU the sum is
computed from exact per-row sums of the words laid out in blocks of 1024 (a float64 matrix
product, exact for integers of this size; the rows combine in int64, which wraps mod 2**64);
on an accelerator it stays on the device
as a 0-d int64 tensor until the caller gathers a step's worth with :func:`gather`: one host
sync per step.
"""
from __future__ import annotations

import hashlib
import zlib

import numpy as np
from typing import Any, NamedTuple, Optional, Sequence, Union

import torch

_C1 = 0x9E3779B97F4A7C15 - (1 << 64)  # odd, as a signed int64
_weights: dict[tuple[str, Optional[int]], Union[np.ndarray, torch.Tensor]] = {}
_CPU = torch.device("cpu")

#: A fingerprint: an int on the CPU, a 1-element int64 tensor on an accelerator (until gathered).
Fingerprint = Union[int, torch.Tensor]
#: One fingerprint per sample: ints, or one int64 tensor of them on an accelerator.
Rows = Union[list[int], list[Fingerprint], torch.Tensor]


def _weight_table(n: int, device: torch.device) -> Union[np.ndarray, torch.Tensor]:
    """``w_i = (2i + 1) * C1 mod 2**64`` for i < n: a numpy array on the CPU, else a tensor."""
    key = (device.type, device.index)
    have = _weights.get(key)
    if have is None or len(have) < n:
        size = max(n, 4096, 0 if have is None else 2 * len(have))
        if device.type == "cpu":
            with np.errstate(over="ignore"):
                have = (np.arange(size, dtype=np.int64) * 2 + 1) * np.int64(_C1)
        else:
            have = (torch.arange(size, dtype=torch.int64, device=device) * 2 + 1) * _C1
        _weights[key] = have
    return have[:n]


def words(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes as a flat vector of signed 32-, 16- or 8-bit words."""
    t = t.detach()
    if t.is_complex():
        t = torch.view_as_real(t)
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    flat = t.contiguous().reshape(-1)
    size = flat.element_size()
    if size >= 4:
        return flat.view(torch.int32)
    if size == 2:
        return flat.view(torch.int16)
    return flat.view(torch.uint8)


_metas: dict[tuple[torch.dtype, tuple[int, ...]], int] = {}


def _meta(t: torch.Tensor) -> int:
    # Not hash(): Python salts string hashes per process.
    key = (t.dtype, tuple(t.shape))
    value = _metas.get(key)
    if value is None:
        if len(_metas) > 4096:  # shapes that vary from step to step (text of any length)
            _metas.clear()
        value = _metas[key] = zlib.crc32(f"{t.dtype}{key[1]}".encode())
    return value


_BLOCK = 1024
_CHUNK_ROWS = 64  # rows of words converted at a time: 512 KiB of float64, cache-resident
_SMALL = 4 * _BLOCK  # fewer words: fingerprinted together with the call's other small tensors
_ROW_WEIGHTS = np.stack([np.ones(_BLOCK), np.arange(_BLOCK, dtype=np.float64)], axis=1)
# Scales float rows before a float sum, so finite values never overflow it (see _row_sums).
_FINITE_SCALE = {np.dtype(np.float32): np.full(_BLOCK, 2.0 ** -20, dtype=np.float32),
                 np.dtype(np.float64): np.full(_BLOCK // 2, 2.0 ** -20, dtype=np.float64)}


def _row_sums(grid: np.ndarray, floats: Optional[np.dtype] = None) -> tuple[np.ndarray, bool]:
    """Per row of ``_BLOCK`` words: ``[sum_k a_k, sum_k k * a_k]`` as exact int64.

    Computed as a float64 matrix product (BLAS, one pass over the words): every term is an
    integer below ``2**31 * 2**10`` in magnitude and every partial sum of a row below ``2**51``,
    so each float64 operation is exact (integers below ``2**53``), whatever order or fused
    multiply-add the BLAS uses.

    ``floats`` (float32 or float64, the words' values): also whether every value is finite,
    from a sum of each chunk's values scaled by ``2**-20`` while the chunk is in cache (NaN and
    infinities propagate through it; scaled, finite values cannot overflow it; True when
    ``floats`` is None). Returns ``(sums, finite)``."""
    out = np.empty((grid.shape[0], 2), dtype=np.float64)
    buffer = np.empty((min(_CHUNK_ROWS, grid.shape[0]), _BLOCK), dtype=np.float64)
    finite = True
    for start in range(0, grid.shape[0], _CHUNK_ROWS):
        chunk = grid[start:start + _CHUNK_ROWS]
        converted = buffer[:len(chunk)]
        np.copyto(converted, chunk, casting="unsafe")
        np.matmul(converted, _ROW_WEIGHTS, out=out[start:start + len(chunk)])
        if floats is not None and finite:
            values = chunk.view(floats)
            finite = bool(np.isfinite((values @ _FINITE_SCALE[floats]).sum()))
    return out.astype(np.int64), finite


def _combine_rows(sums: np.ndarray) -> int:
    """``sum((2i + 1) * a_i) * C1 mod 2**64`` from :func:`_row_sums` of consecutive blocks:
    with ``i = b*B + k``, ``sum(i * a_i) = B * sum_b(b * rowsum_b) + sum_b(sum_k(k * a_bk))``."""
    with np.errstate(over="ignore"):
        total = sums[:, 0].sum()
        weighted = (np.arange(len(sums), dtype=np.int64) * _BLOCK * sums[:, 0]).sum() + \
            sums[:, 1].sum()
        return int((weighted * 2 + total) * np.int64(_C1))


def _cpu_dot(a: np.ndarray) -> int:
    """``sum((2i + 1) * a_i) * C1 mod 2**64`` of a flat word array."""
    return _small_dots([a])[0] if a.size < _SMALL else _cpu_large(a, None)[0]


def _cpu_row_dots(rows: np.ndarray) -> tuple[list[int], int]:
    """:func:`_cpu_dot` of each row of a 2-D word array (a list), and of the whole array read
    flat (an int), from one :func:`_row_sums` over the rows cut in blocks (a row's last block
    padded with zero words, which add nothing)."""
    n, length = rows.shape
    blocks = -(-length // _BLOCK)
    if length != blocks * _BLOCK:
        padded = np.zeros((n, blocks * _BLOCK), dtype=rows.dtype)
        padded[:, :length] = rows
        rows = padded
    sums = _row_sums(rows.reshape(n * blocks, _BLOCK))[0].reshape(n, blocks, 2)
    with np.errstate(over="ignore"):
        total = sums[:, :, 0].sum(1)
        weighted = (np.arange(blocks, dtype=np.int64) * _BLOCK * sums[:, :, 0]).sum(1) + \
            sums[:, :, 1].sum(1)
        raw = (weighted * 2 + total) * np.int64(_C1)
        return raw.tolist(), _whole(raw, total, length)


def _whole(raw: np.ndarray, total: np.ndarray, length: int) -> int:
    """The flat array's dot from its rows' (``raw``, each row's own) and the rows' word sums:
    word ``k`` of row ``j`` is word ``j*L + k`` of the whole, its weight ``2jL*C1`` more."""
    with np.errstate(over="ignore"):
        shift = (np.arange(len(total), dtype=np.int64) * total).sum() * np.int64(2 * length) * \
            np.int64(_C1)
        return int(raw.sum() + shift)


def _dot(w: torch.Tensor, device: torch.device) -> Fingerprint:
    """``sum(w_i * weight_i) mod 2**64``: numpy sums on the CPU, torch on an accelerator."""
    if device.type == "cpu":
        return _cpu_dot(w.numpy())
    return (w.to(torch.int64) * _weight_table(w.numel(), device)).sum()


def fingerprint(t: torch.Tensor) -> Fingerprint:
    """The tensor's fingerprint: an int for a CPU tensor, a 1-element int64 tensor on its
    device otherwise (so a step's fingerprints cost one transfer, see :func:`gather`)."""
    w = words(t)
    value = _dot(w, w.device)
    return value + _meta(t)


class Scan(NamedTuple):
    """:func:`scan` of several tensors."""

    values: list[Any]  # the fingerprint of each tensor, None where the tensor was None
    finite: Fingerprint  # 1 when every floating value is finite, else 0 (a 0-d tensor off the CPU)


def fingerprints(tensors: Sequence[Optional[torch.Tensor]]) -> list[Optional[Fingerprint]]:
    """:func:`fingerprint` of each tensor (None stays None). On the CPU the small tensors
    (biases, norms) are fingerprinted together, in a few numpy calls instead of a few each."""
    return _many(tensors, False).values


def scan(tensors: Sequence[Optional[torch.Tensor]]) -> Scan:
    """:func:`fingerprints`, and whether every value of the floating tensors is finite: on
    the CPU from the same read of each large float32/float64 tensor (the chunk in cache), so a
    step's gradients are read once for both."""
    return _many(tensors, True)


_FLOATS: dict[torch.dtype, np.dtype] = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}


def _many(tensors: Sequence[Optional[torch.Tensor]], check: bool) -> Scan:
    values: list[Any] = [None] * len(tensors)
    small: list[Any] = []  # (index, tensor, words)
    unchecked: list[Any] = []  # floating tensors whose values are still to be checked
    finite = True
    for i, t in enumerate(tensors):
        if t is None:
            continue
        w = words(t)
        if t.device.type != "cpu":
            values[i] = _dot(w, w.device) + _meta(t)
            unchecked.append(t)
        elif w.numel() < _SMALL:
            small.append((i, t, w))
            unchecked.append(t)
        else:
            floats = _FLOATS.get(t.dtype) if check else None
            value, ok = _cpu_large(w.numpy(), floats)
            values[i] = value + _meta(t)
            finite = finite and ok
            if floats is None:
                unchecked.append(t)
    for (i, t, _), value in zip(small, _small_dots([w.numpy() for _, _, w in small])):
        values[i] = value + _meta(t)
    if not check:
        return Scan(values, 1)
    return Scan(values, _finite_flag([t for t in unchecked if t.is_floating_point()], finite))


def _cpu_large(a: np.ndarray, floats: Optional[np.dtype]) -> tuple[int, bool]:
    """:func:`_cpu_dot` of a flat word array of at least ``_SMALL`` words, and (``floats``
    given) whether its values, read as that dtype, are all finite."""
    rows_n = a.size // _BLOCK
    m = rows_n * _BLOCK
    grid = a[:m].reshape(rows_n, _BLOCK)
    sums, finite = _row_sums(grid, floats)
    value = _combine_rows(sums)
    with np.errstate(over="ignore"):
        tail = (a[m:].astype(np.int64) * _weight_table(a.size, _CPU)[m:]).sum()
        value = int(np.int64(value) + tail)
    if floats is not None and m < a.size:
        finite = finite and bool(np.isfinite(a[m:].view(floats)).all())
    return value, finite


_layouts: dict[tuple[Any, ...], Any] = {}


def _small_dots(arrays: list[np.ndarray]) -> list[int]:
    """:func:`_cpu_dot` of each small word array, from one product and one segmented sum."""
    if not arrays:
        return []
    sizes = tuple(a.size for a in arrays)
    layout = _layouts.get(sizes)
    if layout is None:
        if len(_layouts) > 256:
            _layouts.clear()
        starts = np.cumsum((0,) + sizes[:-1])
        weights = np.concatenate([_weight_table(n, _CPU) for n in sizes]) if sum(sizes) else None
        layout = _layouts[sizes] = (starts, weights)
    starts, weights = layout
    out = [0] * len(arrays)
    nonempty = [k for k, n in enumerate(sizes) if n]
    if nonempty:
        assert weights is not None  # a nonempty array: sum(sizes) > 0 built the table
        words_ = np.concatenate(arrays, dtype=np.int64)
        with np.errstate(over="ignore"):
            sums = np.add.reduceat(words_ * weights, starts[nonempty])
        for k, v in zip(nonempty, sums.tolist()):
            out[k] = v
    return out


def _finite_flag(tensors: list[torch.Tensor], finite: bool) -> Fingerprint:
    """``finite`` and whether every value of ``tensors`` is finite: 1 or 0, or a 0-d int64
    tensor on the tensors' device (no host sync of its own; :func:`gather` takes it). CPU
    tensors (the small ones, and dtypes numpy cannot read) are checked together; others from
    each one's largest and smallest value (NaN propagates through both, +inf is the largest,
    -inf the smallest): no temporary tensor of a tensor's size on the device."""
    if not finite:
        return 0
    cpu = [t.detach().reshape(-1) for t in tensors if t.device.type == "cpu" and t.numel()]
    if cpu and not bool(torch.isfinite(torch.cat(cpu)).all()):
        return 0
    peaks = [torch.stack([t.detach().amax(), t.detach().amin()])
             for t in tensors if t.device.type != "cpu" and t.numel()]
    if not peaks:
        return 1
    if len({p.device for p in peaks}) > 1:
        return int(all(bool(torch.isfinite(p).all()) for p in peaks))
    return torch.isfinite(torch.cat(peaks)).all().to(torch.int64)


def row_fingerprints(t: torch.Tensor) -> Rows:
    """One fingerprint per sample (along dim 0): lets a comparison tell order from content."""
    return sample_fingerprints(t)[0]


def sample_fingerprints(t: torch.Tensor) -> tuple[Rows, Fingerprint]:
    """:func:`row_fingerprints` and the :func:`fingerprint` of the whole tensor; on the CPU
    from one read of the tensor."""
    if t.dim() == 0 or t.shape[0] == 0:
        whole = fingerprint(t)
        return [whole], whole
    n = t.shape[0]
    w = words(t).reshape(n, -1)
    if w.device.type != "cpu":
        return (w.to(torch.int64) * _weight_table(w.shape[1], w.device)).sum(1), fingerprint(t)
    a = w.numpy()
    if a.shape[1] >= _BLOCK:
        rows, whole = _cpu_row_dots(a)
    else:
        wide = a.astype(np.int64)
        with np.errstate(over="ignore"):
            raw = wide @ _weight_table(a.shape[1], _CPU)
        rows, whole = raw.tolist(), _whole(raw, wide.sum(1), a.shape[1])
    return rows, whole + _meta(t)


def gather(parts: Sequence[Any]) -> list[Any]:
    """Bring a step's fingerprints to the host: ints pass through, device tensors are
    concatenated per device and copied once (one sync)."""
    out = list(parts)
    by_device: dict[torch.device, list[int]] = {}
    for i, p in enumerate(parts):
        if isinstance(p, torch.Tensor):
            by_device.setdefault(p.device, []).append(i)
    for idx in by_device.values():
        values = torch.cat([parts[i].reshape(-1) for i in idx]).cpu().tolist()
        pos = 0
        for i in idx:
            k = parts[i].numel()
            out[i] = values[pos] if parts[i].dim() == 0 else values[pos:pos + k]
            pos += k
    return out


def bytes_fingerprint(data: bytes) -> str:
    """For host-side state (RNG states): a short exact digest."""
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def as_text(value: Any) -> str:
    """A fingerprint (int, or list of ints) as stable text for a trace file."""
    if isinstance(value, (list, tuple)):
        return ",".join(as_text(v) for v in value)
    return format(int(value) & 0xFFFFFFFFFFFFFFFF, "016x")
