"""Compressed parameter updates through Flower (``federation.params_wire``).

The arrays of a train message and of its reply travel as an ``ArrayRecord``; this module turns an
update (``name -> array``) into the arrays that travel in the chosen format and back. Only
floating arrays are compressed; integer arrays (sparse ``name::idx``) travel as they are. A
floating tensor ``name`` travels as:

* ``fp32``: ``name``, unchanged (nothing here runs; the default [D]);
* ``fp16``: ``name::f16``, float16;
* ``bf16``: ``name::bf16``, the bfloat16 bits as uint16 (numpy has no bfloat16; round to nearest
  even, torch's cast);
* ``int8``: ``name::q8`` (int8, the tensor's shape) and ``name::s8`` (float32, one absmax scale
  per row, :func:`fedft.body.quant.int8_rows`: rows along the last dimension, a 0-d or 1-d tensor
  is one row), ``q = round(x / s)``, ``s = max|x_row| / 127``.

Downloads (server -> client) carry absolute values: a client keeps no state between rounds.
Uploads (client -> server) carry the *delta*, trained minus what the client received this round
(decoded), so int8 rounding is relative to the change, not to the weights. The server adds the
delta to its own exact global tensor (:func:`decode_reply`): download rounding never enters the
server's model, and what the aggregator and ``check_upload`` see are absolute values of the
model's dtype, so every aggregator works unchanged. The values of sparse pairs (``name::val``)
are coded as they are, never as deltas: LT-SFT's values are already differences from the
pre-trained weights, and the indices may differ from what was received.

Decoding trusts nothing: a wrong dtype, a scale vector of the wrong length, a non-finite or
negative scale, a missing partner key, a tensor sent twice or an uncompressed floating tensor
raise :class:`UpdateCodecError` with one line; the server drops that reply like any bad upload.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fedft.body import quant
from fedft.federated.aggregation import Update

FORMATS = ("fp32", "fp16", "bf16", "int8")  # federation.params_wire
F16, BF16, Q8, S8 = "::f16", "::bf16", "::q8", "::s8"
SPARSE_VALUES = "::val"


class UpdateCodecError(ValueError):
    """Compressed arrays that cannot be decoded (the message is one line)."""


def _rows(shape: tuple[int, ...]) -> int:
    """Rows of a tensor of ``shape``: the product of all but the last dimension (1 for 0-d/1-d)."""
    return int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1


def _is_float(v: np.ndarray) -> bool:
    return v.dtype.kind == "f"


def int8_encode(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(q int8 of x's shape, scales float32 (rows,))`` (:func:`fedft.body.quant.int8_rows`)."""
    if x.size == 0:
        return np.zeros(x.shape, np.int8), np.zeros(_rows(x.shape), np.float32)
    q, s = quant.int8_rows(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    return q.numpy().reshape(x.shape), s.numpy().astype(np.float32, copy=False)


def int8_decode(q: np.ndarray, s: np.ndarray) -> np.ndarray:
    """float32 of ``q``'s shape from :func:`int8_encode`'s parts."""
    if q.size == 0:
        return np.zeros(q.shape, np.float32)
    rows = np.ascontiguousarray(q).reshape(_rows(q.shape), -1)
    flat = quant.int8_restore(torch.from_numpy(rows), torch.from_numpy(np.ascontiguousarray(s)))
    return flat.numpy().reshape(q.shape)


def _bf16_bits(x: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(torch.bfloat16)
    return t.view(torch.int16).numpy().view(np.uint16)


def _bf16_values(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _encode_one(key: str, x: np.ndarray, fmt: str, out: Update) -> None:
    if fmt == "fp16":
        out[key + F16] = x.astype(np.float16)
    elif fmt == "bf16":
        out[key + BF16] = _bf16_bits(x)
    elif fmt == "int8":
        out[key + Q8], out[key + S8] = int8_encode(x)
    else:
        raise ValueError(f"unknown params_wire format {fmt!r}; one of {', '.join(FORMATS)}")


def _delta_coded(key: str, reference: Update | None) -> bool:
    return reference is not None and not key.endswith(SPARSE_VALUES)


def encode_update(update: Update, fmt: str, reference: Update | None = None) -> Update:
    """The arrays that travel for ``update`` in ``fmt``. With ``reference`` (an upload: what the
    client received, decoded), dense floating tensors travel as ``update - reference``."""
    if fmt == "fp32":
        return update
    out: Update = {}
    for key, v in update.items():
        v = np.asarray(v)
        if not _is_float(v):
            out[key] = v
            continue
        x = v.astype(np.float32, copy=False)
        if _delta_coded(key, reference):
            ref = reference.get(key)  # type: ignore[union-attr]
            if ref is None or ref.shape != v.shape:
                raise ValueError(f"upload tensor {key!r} has no tensor of its shape in what this client received")
            x = x - ref.astype(np.float32, copy=False)
        _encode_one(key, x, fmt, out)
    return out


def _split(sent: Update, fmt: str) -> dict[str, dict[str, np.ndarray]]:
    """``name -> {suffix: array}`` (``""`` for an array that travelled as it is); checks that the
    suffixes belong to ``fmt`` and that nothing travelled twice."""
    allowed = {"fp16": (F16,), "bf16": (BF16,), "int8": (Q8, S8)}[fmt]
    parts: dict[str, dict[str, np.ndarray]] = {}
    for key, v in sent.items():
        suffix = next((s for s in (F16, BF16, Q8, S8) if key.endswith(s)), "")
        if suffix and suffix not in allowed:
            raise UpdateCodecError(f"array {key!r} is not in the {fmt} format")
        name = key[: len(key) - len(suffix)]
        if not suffix and _is_float(np.asarray(v)):
            raise UpdateCodecError(f"floating tensor {key!r} travelled uncompressed under params_wire={fmt}")
        entry = parts.setdefault(name, {})
        if "" in entry or (entry and not suffix):
            raise UpdateCodecError(f"tensor {name!r} travels twice")
        entry[suffix] = np.asarray(v)
    return parts


def _values(name: str, entry: dict[str, np.ndarray], fmt: str) -> np.ndarray:
    """float32 values of one compressed tensor, checked."""
    def want(suffix: str, dtype: type) -> np.ndarray:
        if suffix not in entry:
            raise UpdateCodecError(f"tensor {name!r} lacks its {name + suffix!r} part")
        if entry[suffix].dtype != dtype:
            raise UpdateCodecError(f"{name + suffix!r} is {entry[suffix].dtype}, expected {np.dtype(dtype)}")
        return entry[suffix]

    if fmt == "fp16":
        return want(F16, np.float16).astype(np.float32)
    if fmt == "bf16":
        return _bf16_values(want(BF16, np.uint16))
    q, s = want(Q8, np.int8), want(S8, np.float32)
    if s.shape != (_rows(q.shape),):
        raise UpdateCodecError(f"{name + S8!r} has shape {s.shape}, expected ({_rows(q.shape)},) for {q.shape}")
    if not (np.isfinite(s).all() and (s >= 0).all()):
        raise UpdateCodecError(f"{name + S8!r} has non-finite or negative scales")
    return int8_decode(q, s)


def decode_update(sent: Update, fmt: str, reference: Update | None = None) -> Update:
    """The update that :func:`encode_update` encoded (float32 values). With ``reference`` (the
    server's global state), dense floating tensors are deltas: the result is ``reference + delta``
    in the reference's dtype, and a tensor the reference lacks or whose shape differs is refused."""
    if fmt == "fp32":
        return sent
    out: Update = {}
    for name, entry in _split(sent, fmt).items():
        if "" in entry:
            out[name] = entry[""]
            continue
        x = _values(name, entry, fmt)
        if _delta_coded(name, reference):
            ref = reference.get(name)  # type: ignore[union-attr]
            if ref is None:
                raise UpdateCodecError(f"unexpected tensor {name!r}")
            if ref.shape != x.shape or not _is_float(ref):
                raise UpdateCodecError(f"tensor {name!r} is {x.shape} floating, expected {ref.dtype}{ref.shape}")
            x = (ref.astype(np.float32, copy=False) + x).astype(ref.dtype, copy=False)
        out[name] = x
    return out


def decode_reply(res: Any, fmt: str, reference: Update) -> str | None:
    """Decode a reply's update (``res.update``, a :class:`~fedft.federated.server.ClientResult`)
    in place against the server's global ``reference``; the reason it cannot be, or None."""
    try:
        res.update = decode_update(res.update, fmt, reference)
    except UpdateCodecError as e:
        return f"malformed {fmt} update: {e}"
    except Exception as e:  # noqa: BLE001 - a client's garbage must not stop the server
        return f"malformed {fmt} update: {type(e).__name__}: {e}"
    return None
