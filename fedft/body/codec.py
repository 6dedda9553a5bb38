"""The wire codec: every tensor that crosses a party boundary is encoded here.

One frame is a fixed 8-byte header, 8 bytes per dimension, then the payload::

    magic "FT" (2) | version (1) | code (1) | ndim (1) | 3 pad bytes | ndim x uint64 | payload

Raw frames (float32/16, bfloat16, integers, bool) carry the little-endian values, so a
``(B, T, D)`` fp32 tensor costs ``8 + 3 * 8 + B * T * D * 4`` bytes. Compressed frames
(:class:`WireFormat` ``int8``, ``int4``, ``topk``; the maths is :mod:`fedft.body.quant`) treat the
last dimension as rows of ``D`` values, ``R`` rows in all:

* ``int8``: ``R`` float32 scales, then ``R * D`` int8 values;
* ``int4``: uint32 group size ``g``, ``R * G`` float32 scales (``G = ceil(D / g)``), then
  ``R * G * g / 2`` bytes of packed nibbles;
* ``topk``: uint32 ``k``, ``R`` float32 scales, ``R * k`` float16 values, ``R * k`` uint16 indices.

The loopback transport, the gRPC body service and the ledger all use these frames, so recorded
bytes are the bytes sent. Several frames may be concatenated into one message; each frame
describes its own length. Decoding trusts nothing: every size is checked against the buffer
before anything is allocated, and ``max_bytes`` caps what a frame may decode to.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from fedft.body import quant

MAGIC = b"FT"
VERSION = 1
HEADER_BYTES = 8
DIM_BYTES = 8
MAX_DIMS = 8
MAX_EXTENT = 2**48  # [D] most values the non-zero dims of a frame may span (zeros count as 1)
_HEAD = struct.Struct("<2sBBB3x")
_U32 = struct.Struct("<I")

WireDtype = str  # a wire format name: fp32, fp16, bf16, int8, int4[:group], topk[:fraction]
WIRE_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
}
LOSSY = ("int8", "int4", "topk")
INT4_GROUP = 32  # [D] values per int4 scale
TOPK_FRACTION = 0.1  # [D] share of each row a top-k frame keeps

# raw code -> (torch dtype, numpy dtype used to move the raw bytes)
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
_LOSSY_CODES = {"int8": 8, "int4": 9, "topk": 10}
_KIND_OF_CODE = {**{c: str(t).removeprefix("torch.") for c, (t, _) in _CODES.items()},
                 1: "fp32", 2: "fp16", 3: "bf16", **{c: k for k, c in _LOSSY_CODES.items()}}


class CodecError(ValueError):
    """A frame that cannot be decoded: bad magic, unknown code, wrong length or too large."""


class Frame(NamedTuple):
    """A decoded frame: the tensor (float32 for compressed frames), the format ``kind`` it
    travelled in (``fp32`` ... ``topk``, or an integer dtype name) and its parameter (int4 group
    size, top-k ``k``; 0 otherwise)."""

    tensor: torch.Tensor
    kind: str
    param: int


@dataclass(frozen=True)
class WireFormat:
    """A parsed wire format name: ``kind`` and its parameter (int4 group, top-k fraction)."""

    kind: str
    param: float = 0.0

    @property
    def name(self) -> str:
        default = {"int4": INT4_GROUP, "topk": TOPK_FRACTION}.get(self.kind)
        if default is None or self.param == default:
            return self.kind
        return f"{self.kind}:{int(self.param) if self.kind == 'int4' else self.param:g}"

    @property
    def lossy(self) -> bool:
        return self.kind in LOSSY

    def frame_nbytes(self, shape: tuple[int, ...] | torch.Size) -> int:
        """Bytes of one frame holding a floating tensor of ``shape`` in this format."""
        if not self.lossy:
            return frame_nbytes(shape, WIRE_DTYPES[self.kind])
        R, D = _rows_cols(tuple(shape))
        head = HEADER_BYTES + DIM_BYTES * len(shape)
        if self.kind == "int8":
            return head + R * 4 + R * D
        if self.kind == "int4":
            G = -(-D // int(self.param))
            return head + 4 + R * G * 4 + R * G * int(self.param) // 2
        return head + 4 + R * 4 + R * quant.topk_k(D, self.param) * 4

    def expected_param(self, D: int) -> int:
        """The frame parameter a tensor with rows of ``D`` values carries in this format."""
        return int(self.param) if self.kind == "int4" else quant.topk_k(D, self.param) if self.kind == "topk" else 0


def wire_format(name: object) -> WireFormat:
    """Parse a wire format name (``fp32``, ``fp16``, ``bf16``, ``int8``, ``int4[:G]``,
    ``topk[:F]``); raise ValueError naming what is allowed."""
    allowed = "fp32, fp16, bf16, int8, int4[:group] (even, 2..4096), topk[:fraction] (0 < f <= 1)"
    if isinstance(name, WireFormat):
        return name
    if not isinstance(name, str):
        raise ValueError(f"unknown wire dtype {name!r}; use one of {allowed}")
    kind, _, arg = name.partition(":")
    if kind in WIRE_DTYPES or kind == "int8":
        if not arg:
            return WireFormat(kind)
    elif kind == "int4":
        group = int(arg) if arg.isdigit() else INT4_GROUP if not arg else -1
        if 2 <= group <= 4096 and group % 2 == 0:
            return WireFormat(kind, group)
    elif kind == "topk":
        try:
            fraction = float(arg) if arg else TOPK_FRACTION
        except ValueError:
            fraction = -1.0
        if 0 < fraction <= 1:
            return WireFormat(kind, fraction)
    raise ValueError(f"unknown wire dtype {name!r}; use one of {allowed}")


def is_wire_format(name: object) -> bool:
    """True if ``name`` parses as a wire format."""
    try:
        wire_format(name)
    except ValueError:
        return False
    return True


def check_wire_dtype(name: object) -> WireDtype:
    """Return the canonical name of wire format ``name``, else raise ValueError.

    The one check of a wire format name: the config, both transports and the Open request of
    the body service (:class:`fedft.body.spec.SessionSpec`, which exports it) all go through it.
    """
    return wire_format(name).name


def _rows_cols(shape: tuple[int, ...]) -> tuple[int, int]:
    if not shape:
        return 1, 1
    return int(np.prod(shape[:-1], dtype=object)) if len(shape) > 1 else 1, int(shape[-1])


def frame_nbytes(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> int:
    """Bytes of one raw frame holding a tensor of ``shape`` and ``dtype`` (header included)."""
    n = int(np.prod(shape, dtype=object)) if len(shape) else 1
    return HEADER_BYTES + DIM_BYTES * len(shape) + n * torch.empty((), dtype=dtype).element_size()


def to_wire(t: torch.Tensor, wire: WireDtype | WireFormat | None) -> torch.Tensor:
    """``t`` as the receiver will see it after ``wire`` (cast, or quantise and restore)."""
    if wire is None or not t.is_floating_point():
        return t
    fmt = wire_format(wire)
    if not fmt.lossy:
        return t.to(WIRE_DTYPES[fmt.kind])
    return decode(encode(t, fmt))


def _head(code: int, shape: tuple[int, ...]) -> bytes:
    return _HEAD.pack(MAGIC, VERSION, code, len(shape)) + struct.pack(f"<{len(shape)}Q", *shape)


def _lossy_payload(t: torch.Tensor, fmt: WireFormat) -> bytes:
    R, D = _rows_cols(tuple(t.shape))
    if fmt.kind == "int8":
        q, s = quant.int8_rows(t)
        return s.numpy().astype("<f4").tobytes() + q.numpy().tobytes()
    if fmt.kind == "int4":
        packed, s = quant.int4_groups(t, int(fmt.param))
        return _U32.pack(int(fmt.param)) + s.numpy().astype("<f4").tobytes() + packed.numpy().tobytes()
    k = quant.topk_k(D, fmt.param)
    vals, idx, s = quant.topk_rows(t, k) if R * D else (torch.zeros(R, k, dtype=torch.float16),
                                                         torch.zeros(R, k, dtype=torch.uint16), torch.zeros(R))
    return (_U32.pack(k) + s.numpy().astype("<f4").tobytes() + vals.numpy().astype("<f2").tobytes()
            + idx.numpy().astype("<u2").tobytes())


def encode(t: torch.Tensor, wire: WireDtype | WireFormat | None = None) -> bytes:
    """Encode one tensor as a frame; a floating tensor goes in format ``wire`` (as is if None)."""
    t = t.detach().contiguous().cpu()
    fmt = None if wire is None or not t.is_floating_point() else wire_format(wire)
    if fmt is not None and fmt.lossy:
        return _head(_LOSSY_CODES[fmt.kind], tuple(t.shape)) + _lossy_payload(t, fmt)
    if fmt is not None:
        t = t.to(WIRE_DTYPES[fmt.kind])
    code = _BY_DTYPE.get(t.dtype)
    if code is None:
        raise CodecError(f"dtype {t.dtype} cannot be sent; supported: {sorted(map(str, _BY_DTYPE))}")
    raw = t.view(torch.int16) if t.dtype == torch.bfloat16 else t.to(torch.uint8) if t.dtype == torch.bool else t
    return _head(code, tuple(t.shape)) + raw.numpy().tobytes()


def encode_many(tensors: list[torch.Tensor], wire: WireDtype | WireFormat | None = None) -> bytes:
    """Concatenate the frames of several tensors into one message."""
    return b"".join(encode(t, wire) for t in tensors)


class _Reader:
    """Bounds-checked reads from one buffer."""

    def __init__(self, buf: bytes | memoryview, pos: int) -> None:
        self.buf, self.pos = buf, pos

    def array(self, dtype: str, count: int, what: str) -> np.ndarray:
        size = count * np.dtype(dtype).itemsize
        if len(self.buf) - self.pos < size:
            raise CodecError(f"truncated frame: {what} needs {size} bytes, {len(self.buf) - self.pos} left")
        arr = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
        self.pos += size
        return arr.copy()

    def u32(self, what: str) -> int:
        return int(self.array("<u4", 1, what)[0])


def _decode_lossy(r: _Reader, kind: str, shape: tuple[int, ...]) -> Frame:
    R, D = _rows_cols(shape)
    if kind == "int8":
        s = torch.from_numpy(r.array("<f4", R, "scales"))
        q = torch.from_numpy(r.array("i1", R * D, "int8 values")).view(R, D)
        return Frame(quant.int8_restore(q, s).reshape(shape), kind, 0)
    param = r.u32("frame parameter")
    if kind == "int4":
        if not (2 <= param <= 4096 and param % 2 == 0):
            raise CodecError(f"int4 group size {param} invalid (even, 2..4096)")
        G = -(-D // param)
        s = torch.from_numpy(r.array("<f4", R * G, "scales")).view(R, G)
        packed = torch.from_numpy(r.array("u1", R * G * param // 2, "int4 values")).view(R, G * param // 2)
        return Frame(quant.int4_restore(packed, s, D).reshape(shape), kind, param)
    if D > quant.MAX_TOPK_COLUMNS or param > D or (param == 0 and D > 0):
        raise CodecError(f"top-k k = {param} invalid for rows of {D} values")
    s = torch.from_numpy(r.array("<f4", R, "scales"))
    vals = torch.from_numpy(r.array("<f2", R * param, "top-k values")).view(R, param)
    idx = torch.from_numpy(r.array("<u2", R * param, "top-k indices").astype(np.int64)).view(R, param)
    try:
        return Frame(quant.topk_restore(vals, idx, s, D).reshape(shape), kind, param)
    except ValueError as e:
        raise CodecError(str(e)) from None


def _decode_at(buf: bytes | memoryview, offset: int, max_bytes: int | None) -> tuple[Frame, int]:
    if len(buf) - offset < HEADER_BYTES:
        raise CodecError(f"truncated frame: {len(buf) - offset} bytes, header needs {HEADER_BYTES}")
    magic, version, code, ndim = _HEAD.unpack_from(buf, offset)
    if magic != MAGIC or version != VERSION:
        raise CodecError(f"not a fedft frame (magic {magic!r}, version {version})")
    if code not in _KIND_OF_CODE:
        raise CodecError(f"unknown dtype code {code}")
    if ndim > MAX_DIMS:
        raise CodecError(f"too many dimensions: {ndim} (at most {MAX_DIMS})")
    r = _Reader(buf, offset + HEADER_BYTES)
    shape = tuple(int(d) for d in r.array("<u8", ndim, "shape"))
    if int(np.prod([max(d, 1) for d in shape], dtype=object)) > MAX_EXTENT:
        # numpy and torch cannot even describe such a shape, empty or not
        raise CodecError(f"shape {shape} spans more than {MAX_EXTENT} values")
    n = int(np.prod(shape, dtype=object)) if ndim else 1
    kind = _KIND_OF_CODE[code]
    # what the frame decodes to: float32 for compressed frames, else its own dtype
    size = n * (4 if kind in LOSSY else _CODES[code][1].itemsize)
    if max_bytes is not None and size > max_bytes:
        raise CodecError(f"frame decoding to {size} bytes exceeds the cap of {max_bytes} bytes")
    if kind in LOSSY:
        return _decode_lossy(r, kind, shape), r.pos
    tdtype, ndtype = _CODES[code]
    t = torch.from_numpy(r.array(ndtype.str, n, f"shape {shape}").reshape(shape))
    t = t.view(torch.bfloat16) if tdtype == torch.bfloat16 else t.to(torch.bool) if tdtype == torch.bool else t
    return Frame(t, kind, 0), r.pos


def decode_frames(buf: bytes | memoryview, max_bytes: int | None = None) -> list[Frame]:
    """Decode a message made of concatenated frames, with each frame's format."""
    out, pos = [], 0
    while pos < len(buf):
        frame, pos = _decode_at(buf, pos, max_bytes)
        out.append(frame)
    return out


def decode(buf: bytes | memoryview, max_bytes: int | None = None) -> torch.Tensor:
    """Decode exactly one frame; trailing bytes are an error."""
    frame, end = _decode_at(buf, 0, max_bytes)
    if end != len(buf):
        raise CodecError(f"{len(buf) - end} trailing bytes after the frame")
    return frame.tensor


def decode_many(buf: bytes | memoryview, max_bytes: int | None = None) -> list[torch.Tensor]:
    """Decode a message made of concatenated frames."""
    return [f.tensor for f in decode_frames(buf, max_bytes)]
