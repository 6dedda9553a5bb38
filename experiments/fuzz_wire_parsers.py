"""The parser targets of ``fuzz_wire.py`` besides the frame codec.

* ``SessionSpec.from_json`` on hostile Open payloads: a consistent spec or ``INVALID_ARGUMENT``.
* ``fedft.federated.update_codec.decode_update`` on hostile arrays (what a client's reply carries
  through Flower): an update or ``UpdateCodecError``, never another exception. Examples are
  valid encoded updates of each ``params_wire`` format, then mutated (a part dropped or added, a
  dtype or shape changed, NaN/Inf/negative scales), decoded with and without the server's
  reference (uploads are deltas against it).
"""

from __future__ import annotations

import json

import numpy as np
from hypothesis import strategies as st

from fedft.body import codec
from fedft.body.spec import ServiceError, SessionSpec
from fedft.federated import update_codec as uc

SUFFIXES = ["", uc.F16, uc.BF16, uc.Q8, uc.S8, uc.SPARSE_VALUES, "::idx"]
DTYPES = [np.float32, np.float16, np.float64, np.int8, np.uint16, np.int64, np.dtype(">f4"), np.bool_]
SPECIAL = [np.nan, np.inf, -np.inf, -1.0, 0.0, 1e38]


class Failure(AssertionError):
    """The oracle refused an outcome."""


def _array(draw: st.DrawFn, dtype: object | None = None, shape: tuple[int, ...] | None = None) -> np.ndarray:
    shape = shape if shape is not None else tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = rng.normal(size=shape) * draw(st.sampled_from([1.0, 1e-30, 1e30]))
    if x.size and draw(st.booleans()):
        x.reshape(-1)[draw(st.integers(0, x.size - 1))] = draw(st.sampled_from(SPECIAL))
    dtype = dtype or draw(st.sampled_from(DTYPES))
    with np.errstate(all="ignore"):
        return x.astype(dtype)


@st.composite
def hostile_updates(draw: st.DrawFn) -> tuple[dict, str, dict | None]:
    """``(sent, fmt, reference)``: what a reply may carry, its format and the server's state."""
    fmt = draw(st.sampled_from(uc.FORMATS))
    names = draw(st.lists(st.sampled_from(["a", "b", "w::val", "w::idx"]), min_size=1, max_size=3, unique=True))
    update = {n: _array(draw, np.int64 if n.endswith("idx") else np.float32) for n in names}
    reference = {n: v.astype(np.float32) + 1 for n, v in update.items()} if draw(st.booleans()) else None
    if reference is not None and draw(st.booleans()):
        reference[names[0]] = _array(draw, draw(st.sampled_from(DTYPES)))  # another shape or dtype
    try:
        with np.errstate(all="ignore"):  # the encoder may overflow fp16 on purpose here
            sent = dict(uc.encode_update(update, fmt, reference))
    except ValueError:
        sent = {}
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from([*sent, "a" + draw(st.sampled_from(SUFFIXES))] if sent else ["a"]))
        action = draw(st.sampled_from(["drop", "replace", "add"]))
        if action == "drop":
            sent.pop(key, None)
        else:
            old = sent.get(key)
            same = old is not None and draw(st.booleans())
            sent[key] = _array(draw, old.dtype if same else None, old.shape if same else None)
    return sent, fmt, reference


def check_update(sent: dict, fmt: str, reference: dict | None) -> bool:
    """``decode_update``: an update (True) or ``UpdateCodecError`` (False); else Failure."""
    try:
        out = uc.decode_update(sent, fmt, reference)
    except uc.UpdateCodecError as e:
        if "\n" in str(e):
            raise Failure(f"UpdateCodecError message spans lines: {str(e)[:200]!r}") from None
        return False
    except Exception as e:
        raise Failure(f"decode_update({fmt}) raised {type(e).__name__}: {str(e)[:300]} on "
                      f"{ {k: (v.dtype.str, v.shape) for k, v in sent.items()} }") from e
    if not isinstance(out, dict):
        raise Failure(f"decode_update returned {type(out).__name__}")
    return True


def check_open(payload: bytes, max_message_bytes: int = 2**20) -> bool:
    """``SessionSpec.from_json`` on ``payload``: a consistent spec (True) or INVALID_ARGUMENT."""
    try:
        spec = SessionSpec.from_json(payload, max_message_bytes)
    except ServiceError as e:
        if e.status != "INVALID_ARGUMENT" or "\n" in e.message:
            raise Failure(f"Open refused with {e.status}: {e.message[:200]!r}") from None
        return False
    except Exception as e:
        raise Failure(f"from_json raised {type(e).__name__}: {str(e)[:300]} on {payload[:80]!r}") from e
    if codec.check_wire_dtype(spec.wire) != spec.wire or spec.max_request_bytes > max_message_bytes:
        raise Failure(f"accepted an inconsistent spec {spec}")
    return True


VALID_OPEN = {"client": "c0", "round": 0, "phase": "train", "wire": "int8", "T": 5, "D": 8, "max_batch": 4}
_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
                     lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                     max_leaves=10)
_odd = st.sampled_from([-1, 0, 1, 2**31, 2**63, 10**40, True, 1.5, "8", "int4:0", "int4:4097", "int4:3",
                        "topk:0", "topk:nan", "topk:1e-300", "topk:2", "fp32 ", "INT8", "int4:٣٢", [1, 2],
                        [0, 0], [-1, 1], {}, None, "x" * 300, "eval", "train"])


@st.composite
def open_payloads(draw: st.DrawFn) -> bytes:
    """Open payloads: a valid one with fields replaced, dropped or added; any JSON; any bytes;
    deeply nested arrays."""
    pick = draw(st.integers(0, 5))
    if pick == 0:
        return draw(st.binary(max_size=200))
    if pick == 1:
        return json.dumps(draw(_json)).encode()
    if pick == 2:
        n = draw(st.integers(1, 3000))
        return b"[" * n + b"]" * n
    d = dict(VALID_OPEN)
    keys_ = [*d, "grad_wire", "feedback", "cut", "extra"]
    for k in draw(st.lists(st.sampled_from(keys_), max_size=4)):
        d[k] = draw(st.one_of(_odd, _json))
    for k in draw(st.lists(st.sampled_from(list(VALID_OPEN)), max_size=1 if pick == 3 else 0)):
        d.pop(k, None)
    return json.dumps(d).encode()
