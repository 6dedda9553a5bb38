"""Compressed split wire: frame sizes, codec accuracy, error feedback, negotiation over gRPC and
``split.wire_dtype`` in a federated run (the ledger's activation bytes are the compressed frames)."""

from __future__ import annotations

import json

import grpc
import pytest
import torch
from torch import nn

from fedft.accounting import CommLedger, Kind
from fedft.body import codec
from fedft.body.client import BodyServiceError, GrpcTransport
from fedft.body.service import new_token, start_body_service
from fedft.body.spec import SessionSpec
from fedft.body.transport import BodySession, LoopbackTransport
from fedft.body.wire import ErrorFeedback, Wire
from fedft.config import ExperimentConfig
from fedft.errors import ConfigError

B, T, D = 4, 6, 64
FORMATS = ["fp32", "fp16", "bf16", "int8", "int4", "int4:16", "topk", "topk:0.25"]


def _x(seed: int = 0) -> torch.Tensor:
    return torch.randn(B, T, D, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", FORMATS)
def test_frame_bytes_are_the_formula_and_the_shape_survives(name):
    x = _x()
    frame = codec.encode(x, name)
    assert len(frame) == codec.wire_format(name).frame_nbytes(x.shape)
    (got,) = codec.decode_frames(frame)
    assert got.tensor.shape == x.shape and got.kind == name.partition(":")[0]


def test_int8_is_a_quarter_of_fp32_plus_one_scale_per_row():
    fp32, int8 = (codec.wire_format(n).frame_nbytes((8, 75, 384)) for n in ("fp32", "int8"))
    assert int8 - 32 == 8 * 75 * (384 + 4) and fp32 - 32 == 8 * 75 * 384 * 4
    assert 0.24 <= int8 / fp32 <= 0.30


def test_lossy_errors_are_bounded_by_their_step():
    x = _x()
    rows = x.reshape(-1, D)
    err8 = (codec.decode(codec.encode(x, "int8")) - x).reshape(-1, D).abs()
    assert bool((err8 <= rows.abs().amax(-1, keepdim=True) / 254 + 1e-6).all())
    err4 = (codec.decode(codec.encode(x, "int4:16")) - x).reshape(-1, D // 16, 16).abs()
    groups = rows.reshape(-1, D // 16, 16).abs().amax(-1, keepdim=True)
    assert bool((err4 <= groups / 14 + 1e-6).all())


def test_topk_keeps_the_largest_entries_of_each_row():
    x = _x()
    got = codec.decode(codec.encode(x, "topk:0.25")).reshape(-1, D)
    rows = x.reshape(-1, D)
    k = round(0.25 * D)
    assert bool(((got != 0).sum(-1) == k).all())
    kept = got != 0
    smallest_kept = rows.abs().masked_fill(~kept, float("inf")).amin(-1)
    largest_dropped = rows.abs().masked_fill(kept, 0).amax(-1)
    assert bool((smallest_kept >= largest_dropped).all())
    torch.testing.assert_close(got[kept], rows[kept], rtol=1e-3, atol=1e-6)


def test_error_feedback_sends_what_topk_dropped_with_later_batches():
    g = _x(1)
    with_ef, without = ErrorFeedback("topk", True), ErrorFeedback("topk", False)
    sent_ef = sum(codec.decode(with_ef.encode(g)) for _ in range(30))
    sent = sum(codec.decode(without.encode(g)) for _ in range(30))
    total = 30 * g
    assert (sent_ef - total).norm() < 0.5 * (sent - total).norm()
    with_ef.encode(torch.ones(2, D))  # another shape starts afresh
    assert with_ef.residual is not None and with_ef.residual.shape == (2, D)


def test_format_names_are_checked_with_one_line_errors():
    assert codec.check_wire_dtype("int4:32") == "int4" and codec.check_wire_dtype("topk:0.1") == "topk"
    for bad in ("fp8", "int4:3", "int4:0", "topk:0", "topk:1.5", "topk:x", "int8:2", 3):
        with pytest.raises(ValueError, match="unknown wire dtype"):
            codec.wire_format(bad)
    with pytest.raises(ConfigError, match="split.wire_dtype"):
        ExperimentConfig.from_overrides(["split.wire_dtype=int3"])
    with pytest.raises(ConfigError, match="split.grad_wire_dtype"):
        ExperimentConfig.from_overrides(["split.grad_wire_dtype=topk:2"])


class Tokenwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(D, D)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return torch.tanh(self.lin(h))


def _step(transport, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    z = transport.forward(x, None)
    return z, transport.backward(torch.ones_like(z) / z.numel())


def test_grpc_and_loopback_send_the_same_bytes_and_values_for_every_format():
    body = Tokenwise().eval().requires_grad_(False)
    with start_body_service(body, token=(tok := new_token()), mode="frozen") as handle:
        for act, grad in [("int8", None), ("int4", "topk"), ("fp16", "int8"), ("topk:0.5", None)]:
            wire = Wire(act, grad)
            lg, rg = CommLedger(), CommLedger()
            loop = LoopbackTransport(BodySession(body, inputs_only=True), lg, wire=wire)
            with GrpcTransport(handle.address, tok, rg, wire=wire, T=T, D=D, max_batch=B) as remote:
                for seed in range(3):
                    a, b = _step(loop, _x(seed)), _step(remote, _x(seed))
                    torch.testing.assert_close(a, b)
            split = {k: v for k, v in rg.by_kind().items() if k != Kind.CONTROL}
            assert split == lg.by_kind()
            assert split[Kind.GRADS_UP] == 3 * Wire(act, grad).grad_format.frame_nbytes((B, T, D))


def test_a_frame_in_another_format_than_negotiated_is_refused_for_that_session_only():
    body = Tokenwise().eval().requires_grad_(False)
    with start_body_service(body, token=(tok := new_token()), mode="frozen") as handle:
        with GrpcTransport(handle.address, tok, CommLedger(), wire="int8", T=T, D=D, max_batch=B) as tr:
            tr.wire = Wire("int4")  # the client now sends something else than it negotiated
            with pytest.raises(BodyServiceError, match="negotiated int8") as e:
                tr.forward(_x(), None)
            assert e.value.code is grpc.StatusCode.INVALID_ARGUMENT
        with GrpcTransport(handle.address, tok, CommLedger(), wire="int8", T=T, D=D, max_batch=B) as ok:
            assert _step(ok, _x())[0].shape == (B, T, D)


def test_open_carries_the_gradient_format_and_feedback_only_when_they_differ():
    plain = json.loads(SessionSpec("c", 0, "split", "int8", T, D, B).to_json())
    assert "grad_wire" not in plain and "feedback" not in plain
    spec = SessionSpec("c", 0, "split", "int8", T, D, B, grad_wire="topk", feedback=True)
    back = SessionSpec.from_json(spec.to_json(), 2**30)
    assert back.formats.grad_format.kind == "topk" and back.feedback and back.formats.act_format.kind == "int8"


TINY = ["model.name=tiny-vit", "data.name=synthetic-images", "data.image_size=16", "data.train_size=32",
        "data.test_size=8", "partition.scheme=iid", "partition.num_clients=2", "partition.min_size=4",
        "federation.rounds=1", "federation.engine=inprocess", "train.batch_size=8", "method.prompt_len=2",
        "output.plots=false"]


def test_int8_wire_in_a_federated_run_records_compressed_activation_bytes(tmp_path):
    from fedft.runner import run

    out = {}
    for wire in ("fp32", "int8"):
        cfg = ExperimentConfig.from_overrides([*TINY, f"split.wire_dtype={wire}"])
        out[wire] = run(cfg, tmp_path / wire, show=False)["bytes_by_kind"]
    ratio = out["int8"][Kind.ACTIVATIONS_UP] / out["fp32"][Kind.ACTIVATIONS_UP]
    assert 0.24 <= ratio <= 0.30
    assert out["int8"][Kind.PARAMS_UP] == out["fp32"][Kind.PARAMS_UP]


def test_a_split_model_is_evaluated_over_its_wire_and_fp32_changes_nothing():
    from fedft.data.datasets import encode, load_raw
    from fedft.federated.client import split_parts
    from fedft.model import build_model
    from fedft.split.served import OverTheWire, served
    from fedft.train import evaluate

    cfg = ExperimentConfig.from_overrides([*TINY, "data.val_size=0"])
    raw = load_raw(cfg.data, 0)
    model, _, pre = build_model(cfg, raw.num_labels)
    parts = split_parts(cfg, model)
    assert served(model, parts, "fp32") is model and served(model, None, "int8") is model
    test = encode(raw, "test", pre, cfg.data.max_length)
    with torch.no_grad():
        plain = evaluate(model, test, 8)
        chained = evaluate(OverTheWire(model, parts, "fp32"), test, 8)
        wired = evaluate(served(model, parts, "topk:0.25"), test, 8)
    assert chained.loss == pytest.approx(plain.loss, rel=1e-5)
    assert wired.loss != pytest.approx(plain.loss, rel=1e-5)  # 3/4 of each row is dropped at both cuts
