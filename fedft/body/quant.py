"""Lossy compression of floating tensors along their last dimension (rows): the maths of the
compressed wire formats, without framing (:mod:`fedft.body.codec` frames them).

* :func:`int8_rows`: symmetric int8 with one float32 absmax scale per row (per token of a
  ``(B, T, D)`` activation): ``q = round(x / s)``, ``s = max|x_row| / 127``.
* :func:`int4_groups`: symmetric int4 in ``[-7, 7]``, two values per byte, one float32 scale per
  group of ``group`` consecutive values of a row (rows are zero-padded to a whole number of groups).
* :func:`topk_rows`: the ``k`` largest-magnitude values of each row, as float16 values relative to
  the row's absmax (a float32 scale per row) and uint16 column indices.

Each ``*_restore`` inverts its encoder to float32 from the parts alone and trusts nothing: the
codec has checked the parts' sizes, and out-of-range indices raise ``ValueError``. A row of
zeros has scale 0 and decodes to zeros.
"""

from __future__ import annotations

import torch

__all__ = ["int4_groups", "int4_restore", "int8_restore", "int8_rows", "topk_k", "topk_restore", "topk_rows"]

INT4_MAX = 7
MAX_TOPK_COLUMNS = 2**16  # indices travel as uint16


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` as float32 ``(R, D)``; a 0-d tensor is one row of one value."""
    x = x.detach().float()
    if x.dim() == 0:
        return x.reshape(1, 1)
    return x.reshape(x.shape[:-1].numel(), x.shape[-1])  # not -1: an empty tensor has no inferred size


def _scale(rows: torch.Tensor, qmax: int) -> torch.Tensor:
    return rows.abs().amax(dim=-1) / qmax if rows.shape[-1] else rows.new_zeros(rows.shape[0])


def _divide(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``x / s`` with zero where ``s`` is 0 (an all-zero row or group)."""
    return torch.where(s > 0, x / torch.where(s > 0, s, 1.0), 0.0)


def int8_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q int8 (R, D), scale float32 (R,))`` of ``x`` with rows along its last dimension."""
    rows = _rows(x)
    s = _scale(rows, 127)
    q = _divide(rows, s[:, None]).round().clamp_(-127, 127).to(torch.int8)
    return q, s


def int8_restore(q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """float32 ``(R, D)`` from :func:`int8_rows`'s parts."""
    return q.float() * s.float()[:, None]


def int4_groups(x: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(packed uint8 (R, G * group / 2), scale float32 (R, G))``, ``G = ceil(D / group)``.

    ``group`` must be even (two values per byte). Value ``v`` is stored as the nibble ``v + 8``,
    low nibble first."""
    if group < 2 or group % 2:
        raise ValueError(f"int4 group size must be an even integer >= 2, got {group}")
    rows = _rows(x)
    R, D = rows.shape
    G = -(-D // group)
    padded = torch.zeros(R, G * group)
    padded[:, :D] = rows
    grouped = padded.view(R, G, group)
    s = grouped.abs().amax(dim=-1) / INT4_MAX  # (R, G)
    q = _divide(grouped, s[..., None]).round().clamp_(-INT4_MAX, INT4_MAX).to(torch.int16) + 8
    q = q.view(R, G * group).to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4), s


def int4_restore(packed: torch.Tensor, s: torch.Tensor, D: int) -> torch.Tensor:
    """float32 ``(R, D)`` from :func:`int4_groups`'s parts."""
    R, G = s.shape
    q = torch.empty(R, packed.shape[1] * 2, dtype=torch.int16)
    q[:, 0::2] = (packed & 0x0F).to(torch.int16)
    q[:, 1::2] = (packed >> 4).to(torch.int16)
    group = q.shape[1] // G if G else 0
    vals = (q - 8).float().view(R, G, group) * s.float()[..., None]
    out = vals.view(R, G * group)[:, :D]
    return out.clone(memory_format=torch.contiguous_format) if D < G * group else out  # not the padding


def topk_k(D: int, fraction: float) -> int:
    """Values kept per row of ``D`` columns: ``round(fraction * D)``, at least 1 (0 when D = 0)."""
    return 0 if D == 0 else min(D, max(1, round(fraction * D)))


def topk_rows(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(values float16 (R, k), indices uint16 (R, k), scale float32 (R,))``: the ``k``
    largest-magnitude entries of each row, as a fraction of the row's absmax."""
    rows = _rows(x)
    if rows.shape[-1] > MAX_TOPK_COLUMNS:
        raise ValueError(f"top-k rows of {rows.shape[-1]} columns: at most {MAX_TOPK_COLUMNS}")
    idx = rows.abs().topk(k, dim=-1, sorted=False).indices
    s = _scale(rows, 1)
    vals = _divide(rows.gather(-1, idx), s[:, None]).to(torch.float16)
    return vals, idx.to(torch.int32).to(torch.uint16), s


def topk_restore(vals: torch.Tensor, idx: torch.Tensor, s: torch.Tensor, D: int) -> torch.Tensor:
    """float32 ``(R, D)`` from :func:`topk_rows`'s parts (zeros where nothing was sent)."""
    index = idx.to(torch.int64)
    if index.numel() and int(index.max()) >= D:
        raise ValueError(f"top-k index {int(index.max())} out of range for {D} columns")
    out = torch.zeros(s.shape[0], D)
    return out.scatter_(-1, index, vals.float() * s.float()[:, None])
