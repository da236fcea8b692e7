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
from typing import Sequence

import torch

_C1 = 0x9E3779B97F4A7C15 - (1 << 64)  # odd, as a signed int64
_weights: dict = {}


def _weight_table(n: int, device: torch.device):
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


def _meta(t: torch.Tensor) -> int:
    # Not hash(): Python salts string hashes per process.
    return zlib.crc32(f"{t.dtype}{tuple(t.shape)}".encode())


_BLOCK = 1024
_CHUNK_ROWS = 64  # rows of words converted at a time: 512 KiB of float64, cache-resident
_ROW_WEIGHTS = np.stack([np.ones(_BLOCK), np.arange(_BLOCK, dtype=np.float64)], axis=1)


def _row_sums(grid: np.ndarray) -> np.ndarray:
    """Per row of ``_BLOCK`` words: ``[sum_k a_k, sum_k k * a_k]`` as exact int64.

    Computed as a float64 matrix product (BLAS, one pass over the words): every term is an
    integer below ``2**31 * 2**10`` in magnitude and every partial sum of a row below ``2**51``,
    so each float64 operation is exact (integers below ``2**53``), whatever order or fused
    multiply-add the BLAS uses."""
    out = np.empty((grid.shape[0], 2), dtype=np.float64)
    for start in range(0, grid.shape[0], _CHUNK_ROWS):
        chunk = grid[start:start + _CHUNK_ROWS]
        np.matmul(chunk.astype(np.float64), _ROW_WEIGHTS, out=out[start:start + len(chunk)])
    return out.astype(np.int64)


def _cpu_dot(a: np.ndarray) -> int:
    """``sum((2i + 1) * a_i) * C1 mod 2**64`` from exact row sums: with ``i = b*B + k``,
    ``sum(i * a_i) = B * sum_b(b * rowsum_b) + sum_b(sum_k(k * a_bk))``."""
    n = a.size
    rows_n = n // _BLOCK
    m = rows_n * _BLOCK
    with np.errstate(over="ignore"):
        if rows_n >= 4:
            sums = _row_sums(a[:m].reshape(rows_n, _BLOCK))
            total = sums[:, 0].sum()
            weighted = (np.arange(rows_n, dtype=np.int64) * _BLOCK * sums[:, 0]).sum() + \
                sums[:, 1].sum()
        else:
            m = 0
            total = weighted = np.int64(0)
        tail = a[m:].astype(np.int64)
        total += tail.sum()
        weighted += (np.arange(m, n, dtype=np.int64) * tail).sum()
        return int((weighted * 2 + total) * np.int64(_C1))


def _cpu_row_dots(rows: np.ndarray) -> list:
    """:func:`_cpu_dot` of each row of a 2-D word array, from one :func:`_row_sums` over the
    rows cut in blocks (a row's last block padded with zero words, which add nothing)."""
    n, length = rows.shape
    blocks = -(-length // _BLOCK)
    if length != blocks * _BLOCK:
        padded = np.zeros((n, blocks * _BLOCK), dtype=rows.dtype)
        padded[:, :length] = rows
        rows = padded
    sums = _row_sums(rows.reshape(n * blocks, _BLOCK)).reshape(n, blocks, 2)
    with np.errstate(over="ignore"):
        total = sums[:, :, 0].sum(1)
        weighted = (np.arange(blocks, dtype=np.int64) * _BLOCK * sums[:, :, 0]).sum(1) + \
            sums[:, :, 1].sum(1)
        return [int(v) for v in (weighted * 2 + total) * np.int64(_C1)]


def _dot(w, device: torch.device):
    """``sum(w_i * weight_i) mod 2**64``: numpy sums on the CPU, torch on an accelerator."""
    if device.type == "cpu":
        return _cpu_dot(w.numpy())
    return (w.to(torch.int64) * _weight_table(w.numel(), device)).sum()


def fingerprint(t: torch.Tensor):
    """The tensor's fingerprint: an int for a CPU tensor, a 1-element int64 tensor on its
    device otherwise (so a step's fingerprints cost one transfer, see :func:`gather`)."""
    w = words(t)
    value = _dot(w, w.device)
    return value + _meta(t)


def row_fingerprints(t: torch.Tensor):
    """One fingerprint per sample (along dim 0): lets a comparison tell order from content."""
    if t.dim() == 0 or t.shape[0] == 0:
        return [fingerprint(t)]
    n = t.shape[0]
    w = words(t).reshape(n, -1)
    if w.device.type == "cpu":
        return _cpu_row_dots(w.numpy()) if w.shape[1] >= _BLOCK else \
            (w.numpy().astype(np.int64) @ _weight_table(w.shape[1], w.device)).tolist()
    return (w.to(torch.int64) * _weight_table(w.shape[1], w.device)).sum(1)


def gather(parts: Sequence) -> list:
    """Bring a step's fingerprints to the host: ints pass through, device tensors are
    concatenated per device and copied once (one sync)."""
    out = list(parts)
    by_device: dict = {}
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


def as_text(value) -> str:
    """A fingerprint (int, or list of ints) as stable text for a trace file."""
    if isinstance(value, (list, tuple)):
        return ",".join(as_text(v) for v in value)
    return format(int(value) & 0xFFFFFFFFFFFFFFFF, "016x")
