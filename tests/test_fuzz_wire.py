"""Fuzzing the wire, briefly and deterministically: the codec's decoders, the Open JSON parser and
the body service's request handling get hostile input and must answer with frames, a spec or
bytes, or their own error (``CodecError``, ``ServiceError`` with a known status), never another
exception, a hang or an allocation over the cap. Round trips hold each format's error bound.

The generators and oracles are ``experiments/fuzz_wire.py``'s, which runs them for longer.
"""

from __future__ import annotations

import json
import struct
import sys
import tracemalloc
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedft.body import codec
from fedft.body.service import BodyService
from fedft.body.spec import ServiceError, SessionSpec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import fuzz_wire as fw  # noqa: E402
import fuzz_wire_parsers as fp  # noqa: E402
import fuzz_wire_service as fws  # noqa: E402


def bounded(n: int) -> settings:
    """``n`` examples, the same ones on every run."""
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


CAPS = st.sampled_from(fw.CAPS)


# ---- the decoders ------------------------------------------------------------------------------


@bounded(300)
@given(fw.hostile_bytes(), CAPS)
def test_arbitrary_bytes_decode_to_frames_or_a_codec_error(buf, cap):
    fw.check_decode(buf, cap)


@bounded(400)
@given(fw.mutated_frames(), CAPS)
def test_mutated_frames_of_every_format_decode_to_frames_or_a_codec_error(buf, cap):
    fw.check_decode(buf, cap)
    if len(buf) >= codec.HEADER_BYTES:  # decode and decode_many agree with decode_frames
        try:
            frames = codec.decode_frames(buf, cap)
        except codec.CodecError:
            return
        assert [tuple(t.shape) for t in codec.decode_many(buf, cap)] == [tuple(f.tensor.shape) for f in frames]


ENORMOUS = [(0, 2**63), (2**63, 0), (0, 2**64 - 1), (0, 2**40, 2**40), (2**62,), (2**31, 2**31, 2), (1, 2**48 + 1)]


@pytest.mark.parametrize("dims", ENORMOUS, ids=str)
@pytest.mark.parametrize("code", range(1, 11))
def test_enormous_dims_raise_before_allocating(code, dims):
    buf = fw._headed(code, list(dims), struct.pack("<I", 2) + bytes(64))
    tracemalloc.start()
    try:
        for cap in (4096, None):
            with pytest.raises(codec.CodecError):
                codec.decode_frames(buf, max_bytes=cap)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20  # numpy's allocations are traced: nothing near the claimed size


@pytest.mark.parametrize("fmt", fw.FORMATS)
@pytest.mark.parametrize("shape", [(0, 8), (3, 0), (0, 0), (), (0,), (2, 0, 3), (1, 1), (5,)], ids=str)
def test_empty_and_scalar_tensors_round_trip_in_every_format(fmt, shape):
    frame = codec.encode(torch.ones(shape), fmt)
    assert len(frame) == codec.wire_format(fmt).frame_nbytes(shape)
    assert tuple(codec.decode(frame).shape) == shape


def test_int4_padding_is_not_kept_by_the_decoded_tensor():
    frame = codec.encode(torch.ones(1, 1), "int4:4096")
    t = codec.decode(frame, max_bytes=4)
    assert t.untyped_storage().nbytes() == 4


# ---- round trips -------------------------------------------------------------------------------


@st.composite
def tensors(draw):
    ndim = draw(st.integers(1, 3))
    shape = (*draw(st.lists(st.integers(1, 4), min_size=ndim - 1, max_size=ndim - 1)), draw(st.integers(1, 70)))
    scale = draw(st.sampled_from([1.0, 1e-3, 1e3, 1e-30, 1e30]))
    return fw.make_tensor(tuple(shape), draw(st.integers(0, 2**16)), scale, ties=draw(st.booleans()))


@bounded(60)
@given(tensors(), st.sampled_from(fw.FORMATS))
def test_round_trip_keeps_shape_bytes_and_each_formats_error_bound(x, name):
    fmt = codec.wire_format(name)
    frame = codec.encode(x, fmt)
    got = codec.decode(frame)
    assert tuple(got.shape) == tuple(x.shape) and len(frame) == fmt.frame_nbytes(x.shape)
    rows, out = x.reshape(-1, x.shape[-1]), got.reshape(-1, x.shape[-1]).float()
    absmax = rows.abs().amax(-1, keepdim=True)
    if fmt.kind in codec.WIRE_DTYPES:
        assert torch.equal(got, x.to(codec.WIRE_DTYPES[fmt.kind]))  # fp32 exact, fp16/bf16 the cast
    elif fmt.kind == "int8":
        assert bool(((out - rows).abs() <= absmax / 254 * (1 + 1e-5)).all())
    elif fmt.kind == "int4":
        g = int(fmt.param)
        pad = -rows.shape[1] % g
        err = torch.nn.functional.pad((out - rows).abs(), (0, pad)).view(rows.shape[0], -1, g)
        gmax = torch.nn.functional.pad(rows.abs(), (0, pad)).view(rows.shape[0], -1, g).amax(-1, keepdim=True)
        assert bool((err <= gmax / 14 * (1 + 1e-5)).all())
    else:
        _check_topk(rows, out, codec.quant.topk_k(rows.shape[1], fmt.param), absmax)


def _check_topk(rows: torch.Tensor, out: torch.Tensor, k: int, absmax: torch.Tensor) -> None:
    """Exactly the k largest magnitudes of each row (up to ties), to float16 precision."""
    kth = rows.abs().topk(k, dim=-1).values[:, -1:]
    kept = out != 0
    assert bool((kept.sum(-1) <= k).all())
    assert not bool((kept & (rows.abs() < kth)).any())  # nothing below the k-th magnitude
    normal = rows.abs() >= absmax * 2**-14  # float16 keeps it apart from zero
    assert not bool((~kept & (rows.abs() > kth) & normal).any())  # nothing above it dropped
    err = (out - rows).abs()[kept]
    assert bool((err <= rows.abs()[kept] * (2**-11 + 2**-20) + absmax.expand_as(rows)[kept] * 2**-24).all())


@bounded(40)
@given(st.sampled_from(fw.INT_DTYPES), st.lists(st.integers(0, 5), max_size=3), st.integers(0, 2**16))
def test_integer_and_bool_frames_round_trip_exactly(dtype, shape, seed):
    x = fw.make_tensor(tuple(shape), seed, dtype=dtype)
    got = codec.decode(codec.encode(x))
    assert got.dtype == dtype and torch.equal(got, x)


# ---- the Open parser and the service -----------------------------------------------------------


@bounded(300)
@given(fp.open_payloads())
def test_open_payloads_give_a_spec_or_invalid_argument(payload):
    fp.check_open(payload)


@bounded(300)
@given(fp.hostile_updates())
def test_hostile_parameter_updates_decode_or_raise_update_codec_error(example):
    fp.check_update(*example)


def test_deeply_nested_open_payload_is_invalid_argument():
    with pytest.raises(ServiceError) as e:
        SessionSpec.from_json(b"[" * 4000 + b"]" * 4000, 2**20)
    assert e.value.status == "INVALID_ARGUMENT"


@bounded(25)
@given(st.sampled_from(["frozen", "shared"]), fws.service_ops())
def test_random_call_sequences_get_bytes_or_a_known_status_and_leave_the_service_sound(mode, ops):
    fws.ServiceFuzz(mode).run(ops)


@pytest.mark.parametrize("wire,grad_wire", [("int4:4096", "int4:4096"), ("topk:1", "topk:1"), ("fp32", "topk:1")])
def test_formats_longer_than_fp32_on_the_wire_are_accepted(wire, grad_wire):
    svc = BodyService(fws.TinyBody(), "frozen")
    spec = SessionSpec("c", 0, "train", wire, fws.T, fws.D, fws.B, grad_wire=grad_wire)
    sid = json.loads(svc.open(spec.to_json()))["session"]
    h = torch.randn(fws.B, fws.T, fws.D)
    z = codec.decode(svc.forward(sid, codec.encode(h, wire) + codec.encode(torch.ones(fws.B, fws.T, dtype=torch.int64))))
    g_h = codec.decode(svc.backward(sid, codec.encode(torch.randn_like(z), grad_wire)))
    assert g_h.shape == h.shape
