"""Split == unsplit for every architecture, shared weights, trainability and degenerate splits."""

from __future__ import annotations

from typing import Any, NamedTuple

import pytest
import torch
from torch import nn

from fedft.accounting import CommLedger
from fedft.body.transport import BodySession, LoopbackTransport
from fedft.model import ARCHS, SoftPrompt, TaskModel, build_task_model
from fedft.model.tiny import backbone_from_config, tiny_config
from fedft.model.tiny import tiny_batch as make_batch
from fedft.split import (
    SplitSpec,
    el2n_scores,
    local_step,
    split_model,
    split_step,
)

pytestmark = pytest.mark.usefixtures("_one_thread")

ARCH_NAMES = ["vit", "dinov2", "bert", "llama"]
TEXT = ["bert", "llama"]
SPLITS = [(0, 0), (1, 0), (0, 1), (1, 2), (2, 2)]
PADDINGS = {"vit": ["none"], "dinov2": ["none"], "bert": ["none", "right"],
            "llama": ["none", "right", "left"]}
CASES = [(a, p) for a in ARCH_NAMES for p in PADDINGS[a]]


class Tiny(NamedTuple):
    """The Hugging Face model as built (for reference forwards) and the TaskModel around it."""

    hf: nn.Module
    model: TaskModel


def make_tiny(kind: str, **kw: Any) -> Tiny:
    torch.manual_seed(0)
    task = "causal_lm" if kind == "llama" else "classification"
    hf = backbone_from_config(tiny_config(kind), task)
    return Tiny(hf, build_task_model(hf, task, num_labels=3, **kw).eval())


def hf_reference(tiny: Tiny, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits from the UNSPLIT Hugging Face forward; prompts spliced in by a forward hook."""
    hf, model = tiny
    kind = model.backbone.config.model_type
    n_p, mask = model.n_prompts, batch.get("attention_mask")
    at = 0 if kind == "llama" else 1
    emb = model.backbone.embed_tokens if kind == "llama" else model.backbone.embeddings
    handle = None
    if n_p:
        prompts = model.prompt.prompt_embeddings  # (P, D)

        def splice(module, args, out):  # out: (B, T, D) after position embeddings
            p = prompts.unsqueeze(0).expand(out.shape[0], -1, -1)
            return torch.cat([out[:, :at], p, out[:, at:]], dim=1)

        handle = emb.register_forward_hook(splice)
        if mask is not None:
            ones = torch.ones(mask.shape[0], n_p, dtype=mask.dtype)
            mask = torch.cat([mask[:, :at], ones, mask[:, at:]], dim=1)
    try:
        if kind == "llama":
            pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)  # as in generate()
            logits = hf(input_ids=batch["input_ids"], attention_mask=mask, position_ids=pos).logits
            return logits[:, n_p:]  # drop prompt positions
        if kind == "bert":
            out = hf(input_ids=batch["input_ids"], attention_mask=mask,
                     token_type_ids=batch.get("token_type_ids")).last_hidden_state
        else:
            out = hf(pixel_values=batch["pixel_values"]).last_hidden_state
    finally:
        if handle is not None:
            handle.remove()
    if model.readout == "cls":
        return model.classifier(out[:, 0])
    rest = out[:, 1:]  # every non-CLS token: prompts + patches / tokens
    if mask is None:
        return model.classifier(rest.mean(dim=1))
    m = mask[:, 1:, None].float()
    return model.classifier((rest * m).sum(dim=1) / m.sum(dim=1))


def run_split(tiny: Tiny, spec: SplitSpec, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    parts = split_model(tiny.model, spec)
    h, mask = parts.head(batch)
    return parts.tail(parts.body(h, mask), mask)


def assert_logits_close(actual: torch.Tensor, expected: torch.Tensor, batch: dict) -> None:
    if actual.dim() == 3 and "attention_mask" in batch:  # LM: compare real tokens only
        keep = batch["attention_mask"].bool()
        actual, expected = actual[keep], expected[keep]
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_registry_covers_the_four_architectures() -> None:
    assert set(ARCH_NAMES) <= set(ARCHS.names())


@pytest.mark.parametrize("prompt_len", [0, 3])
@pytest.mark.parametrize("spec", SPLITS, ids=str)
@pytest.mark.parametrize("kind,padding", CASES)
def test_split_equals_unsplit_hf(kind: str, padding: str, spec: tuple, prompt_len: int) -> None:
    tiny = make_tiny(kind, prompt_len=prompt_len)
    batch = make_batch(kind, padding=padding)
    with torch.no_grad():
        expected = hf_reference(tiny, batch)
        assert_logits_close(tiny.model(batch), expected, batch)
        assert_logits_close(run_split(tiny, SplitSpec(*spec), batch), expected, batch)


@pytest.mark.parametrize("spec", [(1, 0), (0, 1), (1, 2)], ids=str)
@pytest.mark.parametrize("kind", ["vit", "bert"])
def test_cls_readout_equals_unsplit_hf(kind: str, spec: tuple) -> None:
    tiny = make_tiny(kind, prompt_len=2, readout="cls")
    batch = make_batch(kind, padding="right")
    with torch.no_grad():
        torch.testing.assert_close(
            run_split(tiny, SplitSpec(*spec), batch), hf_reference(tiny, batch), atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize("kind", ARCH_NAMES)
def test_parts_share_parameters_by_reference(kind: str) -> None:
    model = make_tiny(kind, prompt_len=2).model
    parts = split_model(model, SplitSpec(1, 1))
    ptr = {n: p.data_ptr() for n, p in model.named_parameters()}
    part_params = [p for part in (parts.head, parts.body, parts.tail) for p in part.parameters()]
    assert all(p.data_ptr() in ptr.values() for p in part_params)
    model_ids = {id(p) for p in model.parameters()}
    assert all(id(p) in model_ids for p in part_params)
    head_emb = parts.head.embeddings
    assert head_emb is model.arch.embedding_module(model.backbone)
    assert parts.head.prompt.prompt_embeddings.data_ptr() == ptr["prompt.prompt_embeddings"]
    assert parts.body.blocks[0] is model.blocks[1]
    assert parts.tail.blocks[0] is model.blocks[-1]
    # no parameter in two parts (the parts are disjoint)
    ids = [id(p) for p in part_params]
    assert len(ids) == len(set(ids))


def test_only_prompts_and_tail_change_after_training() -> None:
    model = make_tiny("vit", prompt_len=2).model
    model.freeze_backbone()
    parts = split_model(model, SplitSpec(1, 1))
    parts.freeze_body()
    parts.tail.requires_grad_(True)
    names = parts.client_named_parameters()
    assert set(names) == {"prompt.prompt_embeddings"} | {
        n for n in dict(model.named_parameters()) if n.startswith(("classifier.", "backbone.layernorm."))
        or n.startswith("backbone.layers.3.")
    }
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(parts.client_parameters(), lr=0.5)
    transport = LoopbackTransport(BodySession(parts.body), CommLedger())
    for seed in range(3):
        opt.zero_grad()
        split_step(parts, make_batch("vit", seed=seed), transport, model.loss)
        opt.step()
    for n, p in model.named_parameters():
        if n in names:
            assert not torch.equal(p, before[n]), f"{n} did not train"
        else:
            assert torch.equal(p, before[n]), f"{n} changed but belongs to the frozen head/body"


def test_cls_readout_with_embedding_only_head_and_tail_is_rejected() -> None:
    model = make_tiny("vit", prompt_len=2, readout="cls").model
    with pytest.raises(ValueError, match="degenerate"):
        split_model(model, SplitSpec(0, 0))
    split_model(model, SplitSpec(0, 1))  # one client block is enough


def test_mean_readout_local_logits_vary_across_inputs() -> None:
    model = make_tiny("vit", prompt_len=2).model
    parts = split_model(model, SplitSpec(0, 0))
    res = local_step(parts, make_batch("vit", batch_size=4), model.loss)
    assert res.n == 4
    assert (res.logits - res.logits[0]).abs().amax(dim=1)[1:].min() > 1e-4


def test_split_spec_validation() -> None:
    with pytest.raises(ValueError, match="head_blocks must be >= 0"):
        SplitSpec(-1, 0)
    with pytest.raises(ValueError, match="exceeds"):
        SplitSpec(3, 2).validate(4)
    with pytest.raises(ValueError, match="exceeds"):
        split_model(make_tiny("bert").model, SplitSpec(3, 2))
    assert SplitSpec(1, 1).ranges(4) == (range(0, 1), range(1, 3), range(3, 4))
    assert SplitSpec(2, 2).ranges(4)[1] == range(2, 2)  # empty body is allowed


def test_empty_body_is_identity() -> None:
    tiny = make_tiny("bert", prompt_len=2)
    batch = make_batch("bert", padding="right")
    with torch.no_grad():
        torch.testing.assert_close(run_split(tiny, SplitSpec(2, 2), batch), tiny.model(batch))


def test_deep_prompts_run_centrally_and_are_rejected_by_split() -> None:
    tiny = make_tiny("vit", prompt_len=2, deep_prompts=True)
    model = tiny.model
    assert model.prompt.prompt_deep.shape == (model.n_layers - 1, 2, 32)
    shallow = make_tiny("vit", prompt_len=2).model
    shallow.prompt.prompt_embeddings.data.copy_(model.prompt.prompt_embeddings)
    batch = make_batch("vit")
    with torch.no_grad():
        assert not torch.allclose(model(batch), shallow(batch))
    with pytest.raises(ValueError, match="deep prompts"):
        split_model(model, SplitSpec(0, 0))


def test_soft_prompt_init_and_mask() -> None:
    torch.manual_seed(0)
    p = SoftPrompt(4, 32, fan_in=48)
    bound = (6 / (48 + 32)) ** 0.5
    assert p.prompt_embeddings.abs().max() <= bound
    assert p.prompt_embeddings.std() > bound / 4
    mask = torch.tensor([[1, 1, 0]], dtype=torch.bool)
    assert p.extend_mask(mask, at=1).tolist() == [[True, True, True, True, True, True, False]]
    assert p.extend_mask(None) is None
    h = torch.zeros(2, 3, 32)
    out = p.insert(h, at=1)
    assert out.shape == (2, 7, 32) and torch.equal(out[0, 1:5], p.prompt_embeddings.detach())


def test_el2n_scores_match_definition_and_restore_mode() -> None:
    model = make_tiny("vit", prompt_len=2).model
    parts = split_model(model, SplitSpec(0, 1))
    model.train()
    batch = make_batch("vit", batch_size=4)
    scores = el2n_scores(parts, batch)
    assert model.training and all(m.training for m in model.modules())
    with torch.no_grad():
        model.eval()
        h, mask = parts.head(batch)
        q = parts.tail(h, mask).softmax(-1)
    onehot = torch.nn.functional.one_hot(batch["labels"], 3).float()
    torch.testing.assert_close(scores, (q - onehot).norm(dim=-1))
    assert scores.shape == (4,) and not scores.requires_grad


def test_el2n_scores_with_batch_statistics_leave_the_running_ones() -> None:
    # Prepare: a readout norm whose running statistics are far from the head features'
    model = make_tiny("vit", prompt_len=2, readout_norm="batchnorm").model
    norm = model.readout_norm
    with torch.no_grad():
        norm.running_mean.fill_(5.0)
        norm.running_var.fill_(9.0)
    parts = split_model(model, SplitSpec(0, 0))
    batch = make_batch("vit", batch_size=4)
    seen: list[torch.Tensor] = []
    hook = norm.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    # Execute
    running = el2n_scores(parts, batch)
    scores = el2n_scores(parts, batch, batch_norm_stats=True)
    hook.remove()
    # Assert: the batch's own standardisation, the running statistics untouched
    assert torch.all(norm.running_mean == 5.0) and torch.all(norm.running_var == 9.0)
    assert not norm.training and not torch.allclose(scores, running)
    x = seen[1]
    z = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + norm.eps)
    q = model.output_layer(z).softmax(-1)
    onehot = torch.nn.functional.one_hot(batch["labels"], 3).float()
    torch.testing.assert_close(scores, (q - onehot).norm(dim=-1))


@pytest.mark.parametrize("kind", TEXT)
def test_text_batch_without_mask(kind: str) -> None:
    tiny = make_tiny(kind, prompt_len=2)
    batch = {k: v for k, v in make_batch(kind).items() if k != "attention_mask"}
    with torch.no_grad():
        full = tiny.model(batch)
        torch.testing.assert_close(run_split(tiny, SplitSpec(1, 1), batch), full)
        torch.testing.assert_close(full, tiny.model({**batch, **{"attention_mask":
                                   torch.ones_like(batch["input_ids"])}}))
