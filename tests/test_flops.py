"""FLOPs measured with FlopCounterMode: the meter, its cache, and SFPrompt's client share.

FlopCounterMode counts 2 FLOPs per multiply-add of matmuls, convolutions and attention; norms,
activations and softmax count 0. The analytic forward of one ViT block on T tokens of width D
with an MLP ratio of 4 is therefore 2 * T * D * (3D + D + 4D + 4D) = 24 T D^2 for the linear
layers plus 2 * 2 * T^2 * D for the two attention products (Q K^T and A V).
"""

from __future__ import annotations

import pytest
import torch
from transformers import Dinov2Config, Dinov2Model

from fedft.accounting import CommLedger
from fedft.body.transport import BodySession, LoopbackTransport
from fedft.flops import FlopsMeter, full_finetune_flops_per_sample
from fedft.model import build_task_model
from fedft.model.tiny import tiny_batch, tiny_task_model
from fedft.split import SplitSpec, split_model, split_step

pytestmark = pytest.mark.usefixtures("_one_thread")


def test_meter_counts_matmuls_by_party_phase_and_part() -> None:
    meter = FlopsMeter()
    a, b = torch.randn(4, 5), torch.randn(5, 6)
    mm = 2 * 4 * 5 * 6
    with meter.measure("client", "local", "head"):
        a @ b
    with meter.measure("server", "split", "body", "bwd"):
        a @ b
        a @ b
    assert meter.total() == 3 * mm
    assert meter.by_party() == {"client": mm, "server": 2 * mm}
    assert meter.by_phase() == {"local": mm, "split": 2 * mm}
    assert meter.by_part() == {"body": 2 * mm, "head": mm}
    assert meter.by_direction() == {"bwd": 2 * mm, "fwd": mm}
    assert meter.total(party="server", phase="split") == 2 * mm
    d = meter.to_dict()
    assert d["total"] == 3 * mm and len(d["entries"]) == 2 and d["entries"][0]["calls"] == 1
    meter.add("server", "split", "body", "fwd", 10)
    assert meter.total(party="server") == 2 * mm + 10


@pytest.mark.parametrize("bad", [("cloud", "split", "body"), ("client", "warmup", "head"),
                                 ("client", "split", "neck")])
def test_meter_rejects_unknown_names(bad: tuple) -> None:
    with pytest.raises(ValueError):
        with FlopsMeter().measure(*bad):
            pass


def test_cache_counts_each_key_once() -> None:
    a, b = torch.randn(4, 5), torch.randn(5, 6)
    cached, plain = FlopsMeter(cache=True), FlopsMeter(cache=False)
    for meter in (cached, plain):
        for _ in range(3):
            with meter.measure("client", "train", "full", key=(a.shape, b.shape)):
                a @ b
    assert cached.total() == plain.total() == 3 * 2 * 4 * 5 * 6
    assert (cached.counted, cached.reused) == (1, 2)
    assert (plain.counted, plain.reused) == (3, 0)


def test_cpu_attention_forward_and_backward_are_counted() -> None:
    b, heads, t, d = 2, 3, 7, 8
    q = torch.randn(b, heads, t, d, requires_grad=True)
    meter = FlopsMeter()
    with meter.measure("client", "train", "full"):
        out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert meter.total() == 2 * (2 * b * heads * t * t * d)  # Q K^T and A V
    with meter.measure("client", "train", "full", "bwd"):
        out.sum().backward()
    assert meter.by_direction()["bwd"] > meter.by_direction()["fwd"]


def test_split_step_meter_cached_equals_uncached() -> None:
    model = tiny_task_model("bert", prompt_len=2)
    model.freeze_backbone()
    parts = split_model(model, SplitSpec(1, 1))
    parts.tail.requires_grad_(True)
    meters = [FlopsMeter(cache=True), FlopsMeter(cache=False)]
    for meter in meters:
        transport = LoopbackTransport(BodySession(parts.body), CommLedger())
        for seed in range(3):
            split_step(parts, tiny_batch("bert", padding="right", seed=seed), transport, model.loss,
                       flops=meter)
    assert meters[0].to_dict() == meters[1].to_dict()
    assert meters[0].counted == 6 and meters[0].reused == 12
    parts_seen = {(e["party"], e["part"], e["direction"]) for e in meters[0].entries()}
    assert parts_seen == {("client", "head", "fwd"), ("client", "head", "bwd"),
                          ("client", "tail", "fwd"), ("client", "tail", "bwd"),
                          ("server", "body", "fwd"), ("server", "body", "bwd")}


def test_sfprompt_client_flops_are_under_one_percent_of_full_finetuning() -> None:
    # DINOv2-small architecture with random weights: FLOPs depend on shapes only
    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                          patch_size=14, image_size=518, layerscale_value=1.0)
    model = build_task_model(Dinov2Model(config), "classification", num_labels=10, prompt_len=10)
    model.eval().freeze_backbone()
    parts = split_model(model, SplitSpec(0, 0))
    parts.freeze_body()
    parts.tail.requires_grad_(True)
    n, d, p = 2, 384, 10
    batch = {"pixel_values": torch.randn(n, 3, 112, 112), "labels": torch.tensor([1, 7])}
    meter = FlopsMeter()
    transport = LoopbackTransport(BodySession(parts.body), CommLedger())
    split_step(parts, batch, transport, model.loss, flops=meter)

    client = meter.total(party="client") / n  # head fwd + tail fwd/bwd + prompt bwd
    full = full_finetune_flops_per_sample(model, batch)
    assert client / full < 0.01, f"client share {client / full:.4%}"

    t = 1 + (112 // 14) ** 2 + p  # CLS + 64 patches + 10 prompts = 75 tokens
    analytic_block = 24 * t * d * d + 4 * t * t * d
    body_fwd = sum(e["flops"] for e in meter.entries()
                   if e["part"] == "body" and e["direction"] == "fwd") / n
    assert body_fwd == pytest.approx(12 * analytic_block, rel=0.05)
    # activation-only backward through the frozen body costs about one forward (docs/sfprompt.md §7)
    body_bwd = sum(e["flops"] for e in meter.entries()
                   if e["part"] == "body" and e["direction"] == "bwd") / n
    assert 0.9 < body_bwd / body_fwd < 1.5
    # full fine-tuning: forward + backward with weight gradients, about 3 forwards
    assert full == pytest.approx(3 * body_fwd, rel=0.1)
