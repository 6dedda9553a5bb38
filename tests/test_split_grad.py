"""Gradients of a split step over the loopback transport equal one unsplit backward."""

from __future__ import annotations

import pytest
import torch
from test_split import ARCH_NAMES

from fedft.accounting import CommLedger
from fedft.body.transport import BodySession, LoopbackTransport
from fedft.model import TaskModel
from fedft.model.tiny import tiny_batch, tiny_task_model
from fedft.split import SplitSpec, local_step, split_model, split_step

pytestmark = pytest.mark.usefixtures("_one_thread")


def grads(model: TaskModel) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def unsplit_grads(model: TaskModel, batch: dict) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    model.zero_grad(set_to_none=True)
    logits = model(batch)
    model.loss(logits, batch).backward()
    return grads(model), logits.detach()


def assert_same_grads(split: dict, full: dict) -> None:
    assert split.keys() == full.keys()
    for name in full:
        torch.testing.assert_close(split[name], full[name], atol=1e-5, rtol=1e-5, msg=name)


def setup(kind: str, spec: SplitSpec, train_body: bool = False, train_head: bool = False):
    model = tiny_task_model(kind, prompt_len=2)  # eval mode: no dropout on either path
    model.freeze_backbone()
    parts = split_model(model, spec)
    parts.tail.requires_grad_(True)
    parts.body.requires_grad_(train_body)
    if train_head:
        parts.head.requires_grad_(True)
    return model, parts


@pytest.mark.parametrize("spec", [SplitSpec(0, 0), SplitSpec(1, 2)], ids=str)
@pytest.mark.parametrize("kind", ARCH_NAMES)
def test_prompt_and_tail_grads_match_unsplit(kind: str, spec: SplitSpec) -> None:
    model, parts = setup(kind, spec)
    batch = tiny_batch(kind, padding="right")
    transport = LoopbackTransport(BodySession(parts.body), CommLedger())
    model.zero_grad(set_to_none=True)
    res = split_step(parts, batch, transport, model.loss)
    split = grads(model)
    full, logits = unsplit_grads(model, batch)
    assert "prompt.prompt_embeddings" in full
    assert not any(n.startswith("backbone.") and "embed" in n for n in full)  # frozen head
    assert_same_grads(split, full)
    torch.testing.assert_close(res.logits, logits, atol=1e-5, rtol=1e-5)
    assert res.n == 3 and res.loss == pytest.approx(float(model.loss(logits, batch)), abs=1e-5)


@pytest.mark.parametrize("kind", ["vit", "bert", "llama"])
def test_trainable_body_and_head_grads_match_unsplit(kind: str) -> None:
    model, parts = setup(kind, SplitSpec(1, 1), train_body=True, train_head=True)
    batch = tiny_batch(kind, padding="left" if kind == "llama" else "right")
    transport = LoopbackTransport(BodySession(parts.body), CommLedger())
    model.zero_grad(set_to_none=True)
    split_step(parts, batch, transport, model.loss)
    split = grads(model)
    full, _ = unsplit_grads(model, batch)
    assert any(n.startswith(("backbone.layers.1.", "backbone.encoder.layer.1.")) for n in full)
    assert_same_grads(split, full)


def test_server_after_backward_hook_runs_once_per_step() -> None:
    model, parts = setup("vit", SplitSpec(0, 0), train_body=True)
    calls = []
    transport = LoopbackTransport(BodySession(parts.body, lambda: calls.append(1)), CommLedger())
    for seed in range(2):
        split_step(parts, tiny_batch("vit", seed=seed), transport, model.loss)
    assert len(calls) == 2


def test_local_step_grads_equal_head_to_tail_backward() -> None:
    model, parts = setup("vit", SplitSpec(0, 1))
    batch = tiny_batch("vit")
    model.zero_grad(set_to_none=True)
    local_step(parts, batch, model.loss)
    split = grads(model)
    model.zero_grad(set_to_none=True)
    h, mask = model.embed(batch)  # body skipped: embeddings straight into the tail
    model.loss(model.logits_from(model.run_blocks(model.blocks[-1:], h, mask), mask), batch).backward()
    assert_same_grads(split, grads(model))
