"""LoRA and (IA)^3 equal peft's own wrapped model; SSF merges exactly; S2FT stays on its slices."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from fedft.config import MethodConfig
from fedft.methods import METHODS
from fedft.methods.lora import backbone_targets
from fedft.methods.s2ft import S2FTOptions, export_adapter, load_adapter
from fedft.model.tiny import tiny_batch, tiny_task_model

pytestmark = pytest.mark.usefixtures("_one_thread")


def _inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


@pytest.mark.parametrize("arch", ["vit", "bert"])
@pytest.mark.parametrize("name", ["lora", "ia3"])
def test_outputs_equal_peft_wrapped_model(name: str, arch: str) -> None:
    # Prepare: our method on a task model, peft's get_peft_model on a copy of the same backbone
    model = tiny_task_model(arch, num_hidden_layers=2)
    reference = copy.deepcopy(model.backbone)
    method = METHODS.get(name)(MethodConfig(name=name))
    method.apply(model)
    peft_cfg = (LoraConfig(r=8, lora_alpha=16, target_modules=backbone_targets(model, ("q", "v")))
                if name == "lora" else method.peft_config(model))
    wrapped = get_peft_model(reference, peft_cfg)
    with torch.no_grad():  # random adapter values, so the comparison is not at the identity
        for n, p in model.named_parameters():
            if "lora_" in n or "ia3_" in n:
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if "ia3_" in n else 0.0))
    ours = {n.removeprefix("backbone."): p for n, p in model.named_parameters()}
    theirs = dict(wrapped.named_parameters())
    adapters = [n for n in theirs if "lora_" in n or "ia3_" in n]
    assert len(adapters) == sum(1 for n in ours if "lora_" in n or "ia3_" in n) > 0
    with torch.no_grad():
        for n in adapters:
            theirs[n].copy_(ours[n.removeprefix("base_model.model.")])
    batch = tiny_batch(arch)
    # Execute
    with torch.no_grad():
        a = model.backbone(**_inputs(batch)).last_hidden_state
        b = wrapped(**_inputs(batch)).last_hidden_state
    # Assert
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("arch", ["vit", "dinov2", "bert", "llama"])
def test_ssf_merged_equals_unmerged(arch: str) -> None:
    # Prepare
    model = tiny_task_model(arch, num_hidden_layers=2)
    method = METHODS.get("ssf")(MethodConfig(name="ssf"))
    method.apply(model)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".ssf_" in n:
                p.add_(0.2 * torch.randn_like(p))
    batch = tiny_batch(arch)
    with torch.no_grad():
        before = model(batch)
    # Execute
    method.finalize(model)
    # Assert
    with torch.no_grad():
        torch.testing.assert_close(model(batch), before, rtol=0, atol=1e-5)
    assert not [n for n, _ in model.named_parameters() if "ssf_" in n]


def test_ssf_trainable_count_matches_formula() -> None:
    # Prepare: ViT, hidden D = 32, intermediate 64, 2 blocks, 3 classes, patch conv with D filters
    model = tiny_task_model("vit", num_hidden_layers=2)
    METHODS.get("ssf")(MethodConfig(name="ssf")).apply(model)
    d, c, blocks, classes = 32, 64, 2, 3
    # per block: 2 norms, q, k, v, o, fc2 (D channels each) and fc1 (C); (gamma, beta) each;
    # plus the patch projection and the final norm (D each), plus the classifier
    expected = blocks * 2 * (7 * d + c) + 2 * (2 * d) + d * classes + classes
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected


@pytest.mark.parametrize("arch", ["vit", "llama"])
def test_s2ft_changes_only_selected_rows_and_columns(arch: str) -> None:
    # Prepare
    cfg = MethodConfig(name="s2ft", options=(("s2ft", S2FTOptions(rho_v=0.25, rho_o=0.25, rho_u=0.1, rho_d=0.1)),))
    model = tiny_task_model(arch, num_hidden_layers=2).train()
    method = METHODS.get("s2ft")(cfg)
    method.apply(model)
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = tiny_batch(arch)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    # Execute
    for _ in range(2):
        opt.zero_grad()
        model.loss(model(batch), batch).backward()
        opt.step()
    adapter = export_adapter(model)
    method.finalize(model)
    # Assert
    out_name = model.output_name
    for n, p in model.named_parameters():
        if n.startswith(out_name):
            continue
        allowed = torch.zeros_like(p, dtype=torch.bool)
        mod = n.rsplit(".", 1)[0]
        if n.endswith("weight") and f"{mod}::rows_idx" in adapter:
            allowed[torch.from_numpy(adapter[f"{mod}::rows_idx"])] = True
        if n.endswith("weight") and f"{mod}::cols_idx" in adapter:
            allowed[:, torch.from_numpy(adapter[f"{mod}::cols_idx"])] = True
        changed = p != w0[n]
        assert not (changed & ~allowed).any(), n
    assert any(k.endswith("rows_idx") for k in adapter) and any(k.endswith("cols_idx") for k in adapter)
    # adapters are additive: removing the exported one restores the pre-trained weights
    load_adapter(model, adapter, sign=-1.0)
    for n, p in model.named_parameters():
        if not n.startswith(out_name):
            torch.testing.assert_close(p, w0[n], rtol=0, atol=1e-6)


def test_prompt_tuning_equals_peft_prompt_tuning_on_a_causal_lm() -> None:
    # fedft's prompts live in the model (so a split puts them in the head); on a model without a
    # CLS token they are prepended, which is peft's PromptTuning: same prompts, same logits
    import copy

    from peft import PromptTuningConfig, TaskType

    from fedft.model import build_task_model
    from fedft.model.tiny import backbone_from_config, tiny_batch, tiny_config

    P = 3
    torch.manual_seed(0)
    hf = backbone_from_config(tiny_config("llama"), "causal_lm")  # LlamaForCausalLM
    reference = copy.deepcopy(hf)  # the same weights, for peft
    model = build_task_model(hf, "causal_lm", prompt_len=P).eval()
    wrapped = get_peft_model(reference, PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=P))
    with torch.no_grad():
        wrapped.prompt_encoder["default"].embedding.weight.copy_(model.prompt.prompt_embeddings)
    batch = tiny_batch("llama", batch_size=2)
    wrapped.eval()
    with torch.no_grad():
        ours = model(batch)  # (B, T, V): prompt rows dropped by the token readout
        theirs = wrapped(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, P:]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
