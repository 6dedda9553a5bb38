"""The ledger, the wire codec, and the bytes a split step records over the loopback transport.

Frame sizes (fedft.body.codec): an 8-byte header, 8 bytes per dimension, then the raw data.
A (B, T, D) activation frame is therefore 8 + 3 * 8 = 32 bytes of header plus B * T * D * beta
bytes of data (beta = 4 for fp32, 2 for fp16/bf16). A (B, T) bool mask frame is 8 + 2 * 8 = 24
bytes plus B * T bytes.
"""

from __future__ import annotations

import pytest
import torch

from fedft.accounting import CommEvent, CommLedger, Direction, Kind, Phase
from fedft.body import codec
from fedft.body.codec import CodecError
from fedft.body.transport import BodySession, LoopbackTransport
from fedft.model.tiny import tiny_batch, tiny_task_model
from fedft.split import SplitSpec, split_model, split_step

pytestmark = pytest.mark.usefixtures("_one_thread")

ACT_HEADER = 8 + 3 * 8  # header + (B, T, D) shape
MASK_HEADER = 8 + 2 * 8  # header + (B, T) shape
KINDS = [Kind.ACTIVATIONS_UP, Kind.ACTIVATIONS_DOWN, Kind.GRADS_UP, Kind.GRADS_DOWN]


# ---- codec -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int64,
                                   torch.int32, torch.uint8, torch.bool])
def test_codec_round_trip_and_size(dtype: torch.dtype) -> None:
    t = (torch.randn(2, 3, 5) * 10).to(dtype)
    buf = codec.encode(t)
    assert len(buf) == codec.frame_nbytes(t.shape, dtype) == ACT_HEADER + t.numel() * t.element_size()
    out = codec.decode(buf)
    assert out.dtype == dtype and torch.equal(out, t)


def test_codec_wire_cast_rounds_floats_only() -> None:
    x = torch.randn(4, 7)
    assert torch.equal(codec.decode(codec.encode(x, "fp16")), x.half())
    assert torch.equal(codec.decode(codec.encode(x, "bf16")), x.bfloat16())
    ids = torch.arange(6)
    assert codec.decode(codec.encode(ids, "fp16")).dtype == torch.int64
    with pytest.raises(ValueError, match="unknown wire dtype"):
        codec.encode(x, "fp8")  # type: ignore[arg-type]


def test_codec_rejects_bad_frames() -> None:
    buf = codec.encode(torch.ones(3, 4))
    with pytest.raises(CodecError, match="truncated"):
        codec.decode(buf[:-1])
    with pytest.raises(CodecError, match="trailing"):
        codec.decode(buf + b"\0")
    with pytest.raises(CodecError, match="not a fedft frame"):
        codec.decode(b"XX" + buf[2:])
    with pytest.raises(CodecError, match="exceeds the cap"):
        codec.decode(buf, max_bytes=47)
    a, b = torch.ones(2), torch.zeros(3, dtype=torch.bool)
    out = codec.decode_many(codec.encode_many([a, b]))
    assert torch.equal(out[0], a) and torch.equal(out[1], b)


# ---- ledger ------------------------------------------------------------------------------------


def test_ledger_records_and_summarises(tmp_path) -> None:
    ledger = CommLedger()
    ledger.add(0, "a", Phase.SPLIT, Kind.ACTIVATIONS_UP, 100)
    ledger.add(0, "b", Phase.SPLIT, Kind.GRADS_DOWN, 50)
    ledger.add(1, "a", Phase.SYNC, Kind.PARAMS_UP, 7)
    ledger.add(1, "a", Phase.SETUP, Kind.CONTROL, 3, direction=Direction.DOWN)
    assert len(ledger) == 4 and ledger.total() == 160
    assert ledger.by_direction() == {"down": 53, "up": 107}
    assert ledger.by_client() == {"a": 110, "b": 50}
    assert ledger.by_round() == {0: 150, 1: 10}
    assert ledger.total(lambda e: e.kind == Kind.PARAMS_UP) == 7
    ledger.to_csv(tmp_path / "ledger.csv")
    assert CommLedger.from_csv(tmp_path / "ledger.csv").events == ledger.events


def test_ledger_rejects_inconsistent_events() -> None:
    with pytest.raises(ValueError, match="travels up"):
        CommEvent(0, "a", "split", "down", "activations_up", 1)
    with pytest.raises(ValueError, match="nbytes"):
        CommEvent(0, "a", "split", "up", "activations_up", -1)
    with pytest.raises(ValueError, match="explicit direction"):
        CommLedger().add(0, "a", "setup", Kind.CONTROL, 1)
    with pytest.raises(ValueError):
        CommLedger().summarize("nbytes")


# ---- loopback split step -----------------------------------------------------------------------


def one_step(kind: str, wire: str = "fp32", prompt_len: int = 2, spec=SplitSpec(0, 0), **kw):
    model = tiny_task_model(kind, prompt_len=prompt_len)
    parts = split_model(model, spec)
    ledger = CommLedger()
    transport = LoopbackTransport(BodySession(parts.body), ledger, round=3, client="7", wire=wire)
    batch = tiny_batch(kind, **kw)
    split_step(parts, batch, transport, model.loss)
    return ledger, batch, model


@pytest.mark.parametrize("wire,beta", [("fp32", 4), ("fp16", 2), ("bf16", 2)])
def test_image_step_records_four_activation_sized_messages(wire: str, beta: int) -> None:
    ledger, batch, model = one_step("vit", wire=wire)
    b, d = 3, 32
    t = 1 + (16 // 4) ** 2 + 2  # CLS + 16 patches + 2 prompts = 19 tokens
    assert [e.kind for e in ledger] == KINDS
    assert all(e.nbytes == ACT_HEADER + b * t * d * beta for e in ledger)  # 7328 B in fp32
    assert all(e.round == 3 and e.client == "7" and e.phase == Phase.SPLIT for e in ledger)
    assert ledger.by_direction() == {"down": 2 * (ACT_HEADER + b * t * d * beta),
                                     "up": 2 * (ACT_HEADER + b * t * d * beta)}


def test_fp16_halves_the_data_part() -> None:
    fp32, _, _ = one_step("vit")
    fp16, _, _ = one_step("vit", wire="fp16")
    for a, b in zip(fp32, fp16, strict=True):
        assert b.nbytes - ACT_HEADER == (a.nbytes - ACT_HEADER) // 2


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_text_step_sends_the_mask_with_the_activations(kind: str) -> None:
    ledger, batch, _ = one_step(kind, padding="right")
    b, t, d = 3, 8 + 2, 32  # 8 tokens + 2 prompts
    act = ACT_HEADER + b * t * d * 4
    mask = MASK_HEADER + b * t * 1  # bool mask, one byte per token
    assert ledger.by_kind() == {
        "activations_up": act + mask, "activations_down": act, "grads_up": act, "grads_down": act,
    }


def test_decoded_values_are_the_wire_rounded_ones() -> None:
    # head 2 + tail 2 of 4 blocks: the body is empty, so the server echoes what it decoded
    model = tiny_task_model("vit", prompt_len=2)
    parts = split_model(model, SplitSpec(2, 2))
    transport = LoopbackTransport(BodySession(parts.body), CommLedger(), wire="fp16")
    h, mask = parts.head(tiny_batch("vit"))
    z = transport.forward(h, mask)
    assert z.dtype == torch.float32 and torch.equal(z, h.detach().half().float())
    assert not torch.equal(z, h.detach())
    g = torch.randn_like(z)
    assert torch.equal(transport.backward(g), g.half().float())
