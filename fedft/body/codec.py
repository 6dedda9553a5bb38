"""The wire codec: every tensor that crosses a party boundary is encoded here.

One frame is a fixed 8-byte header, 8 bytes per dimension, then the raw little-endian values::

    magic "FT" (2) | version (1) | dtype code (1) | ndim (1) | 3 pad bytes | ndim x uint64 | data

So a (B, T, D) fp32 tensor costs ``8 + 3 * 8 + B * T * D * 4`` bytes. The loopback transport, the
gRPC body service and the ledger all use these frames, so recorded bytes are the bytes sent.
Several frames may be concatenated into one message; each frame describes its own length.
"""

from __future__ import annotations

import struct
from typing import Literal, cast

import numpy as np
import torch

MAGIC = b"FT"
VERSION = 1
HEADER_BYTES = 8
DIM_BYTES = 8
_HEAD = struct.Struct("<2sBBB3x")

WireDtype = Literal["fp32", "fp16", "bf16"]
WIRE_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
}

# code -> (torch dtype, numpy dtype used to move the raw bytes)
_CODES: dict[int, tuple[torch.dtype, np.dtype]] = {
    1: (torch.float32, np.dtype("<f4")),
    2: (torch.float16, np.dtype("<f2")),
    3: (torch.bfloat16, np.dtype("<i2")),  # bf16 has no numpy dtype: move the bits as int16
    4: (torch.int64, np.dtype("<i8")),
    5: (torch.int32, np.dtype("<i4")),
    6: (torch.uint8, np.dtype("u1")),
    7: (torch.bool, np.dtype("u1")),
}
_BY_DTYPE = {tdt: code for code, (tdt, _) in _CODES.items()}


class CodecError(ValueError):
    """A frame that cannot be decoded: bad magic, unknown dtype, wrong length or too large."""


def frame_nbytes(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> int:
    """Bytes of one frame holding a tensor of ``shape`` and ``dtype`` (header included)."""
    n = int(np.prod(shape)) if len(shape) else 1
    return HEADER_BYTES + DIM_BYTES * len(shape) + n * torch.empty((), dtype=dtype).element_size()


def check_wire_dtype(name: object) -> WireDtype:
    """Return ``name`` if it names a wire dtype (``fp32``, ``fp16``, ``bf16``), else raise ValueError.

    The one check of a wire dtype name: the codec, both transports and the Open request of the
    body service (:class:`fedft.body.spec.SessionSpec`, which exports it) all go through it.
    """
    if not isinstance(name, str) or name not in WIRE_DTYPES:
        raise ValueError(f"unknown wire dtype {name!r}; use one of {sorted(WIRE_DTYPES)}")
    return cast(WireDtype, name)


def to_wire(t: torch.Tensor, wire: WireDtype | None) -> torch.Tensor:
    """Cast a floating tensor to the wire precision (no-op for integers or ``wire=None``)."""
    if wire is None or not t.is_floating_point():
        return t
    return t.to(WIRE_DTYPES[check_wire_dtype(wire)])


def encode(t: torch.Tensor, wire: WireDtype | None = None) -> bytes:
    """Encode one tensor as a frame, cast to ``wire`` precision if it is floating point."""
    t = to_wire(t.detach(), wire).contiguous().cpu()
    code = _BY_DTYPE.get(t.dtype)
    if code is None:
        raise CodecError(f"dtype {t.dtype} cannot be sent; supported: {sorted(map(str, _BY_DTYPE))}")
    raw = t.view(torch.int16) if t.dtype == torch.bfloat16 else t
    if t.dtype == torch.bool:
        raw = t.to(torch.uint8)
    head = _HEAD.pack(MAGIC, VERSION, code, t.dim()) + struct.pack(f"<{t.dim()}Q", *t.shape)
    return head + raw.numpy().tobytes()


def encode_many(tensors: list[torch.Tensor], wire: WireDtype | None = None) -> bytes:
    """Concatenate the frames of several tensors into one message."""
    return b"".join(encode(t, wire) for t in tensors)


def _decode_at(buf: bytes | memoryview, offset: int, max_bytes: int | None) -> tuple[torch.Tensor, int]:
    if len(buf) - offset < HEADER_BYTES:
        raise CodecError(f"truncated frame: {len(buf) - offset} bytes, header needs {HEADER_BYTES}")
    magic, version, code, ndim = _HEAD.unpack_from(buf, offset)
    if magic != MAGIC or version != VERSION:
        raise CodecError(f"not a fedft frame (magic {magic!r}, version {version})")
    if code not in _CODES:
        raise CodecError(f"unknown dtype code {code}")
    if ndim > 8:
        raise CodecError(f"too many dimensions: {ndim} (at most 8)")
    pos = offset + HEADER_BYTES
    if len(buf) - pos < DIM_BYTES * ndim:
        raise CodecError("truncated frame: shape is cut off")
    shape = struct.unpack_from(f"<{ndim}Q", buf, pos)
    pos += DIM_BYTES * ndim
    tdtype, ndtype = _CODES[code]
    n = int(np.prod(shape, dtype=np.float64)) if ndim else 1
    size = n * ndtype.itemsize
    if max_bytes is not None and size > max_bytes:
        raise CodecError(f"frame of {size} bytes exceeds the cap of {max_bytes} bytes")
    if len(buf) - pos < size:
        raise CodecError(f"truncated frame: {len(buf) - pos} data bytes, shape {shape} needs {size}")
    arr = np.frombuffer(buf, dtype=ndtype, count=n, offset=pos).reshape(shape).copy()
    t = torch.from_numpy(arr)
    if tdtype == torch.bfloat16:
        t = t.view(torch.bfloat16)
    elif tdtype == torch.bool:
        t = t.to(torch.bool)
    return t, pos + size


def decode(buf: bytes | memoryview, max_bytes: int | None = None) -> torch.Tensor:
    """Decode exactly one frame; trailing bytes are an error."""
    t, end = _decode_at(buf, 0, max_bytes)
    if end != len(buf):
        raise CodecError(f"{len(buf) - end} trailing bytes after the frame")
    return t


def decode_many(buf: bytes | memoryview, max_bytes: int | None = None) -> list[torch.Tensor]:
    """Decode a message made of concatenated frames."""
    out, pos = [], 0
    while pos < len(buf):
        t, pos = _decode_at(buf, pos, max_bytes)
        out.append(t)
    return out
