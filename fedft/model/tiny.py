"""Tiny random models and synthetic batches, for tests and examples; nothing here touches the network.

``tiny_config`` gives a small config per supported ``model_type`` (hidden 32, 4 layers),
``backbone_from_config`` a randomly initialised Hugging Face model from a config,
``tiny_task_model`` a seeded :class:`~fedft.model.task.TaskModel` built on one, and ``tiny_batch``
a matching synthetic batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PretrainedConfig

from fedft.model.arch import ARCHS, Arch
from fedft.model.task import Readout, Task, TaskModel, build_task_model

_TINY: dict[str, dict[str, Any]] = {
    "vit": dict(image_size=16, patch_size=4, intermediate_size=64),
    "dinov2": dict(image_size=16, patch_size=4, mlp_ratio=2, layerscale_value=1.0),
    "bert": dict(vocab_size=99, intermediate_size=64, max_position_embeddings=64),
    "llama": dict(
        vocab_size=99, intermediate_size=64, max_position_embeddings=64, num_key_value_heads=1,
        pad_token_id=0, tie_word_embeddings=False, initializer_range=0.1,
    ),
}


def tiny_config(model_type: str, **overrides: Any) -> PretrainedConfig:
    """A tiny config (hidden 32, 4 layers, 2 heads, intermediate 64, vocab 99, 16 px / patch 4)."""
    if model_type not in _TINY:
        raise KeyError(f"no tiny config for {model_type!r}; valid: {', '.join(sorted(_TINY))}")
    kwargs = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, **_TINY[model_type])
    kwargs.update(overrides)
    return AutoConfig.for_model(model_type, **kwargs)


def arch_for_type(model_type: str) -> Arch:
    """The adapter registered for a ``config.model_type``."""
    return ARCHS.get(model_type)()


def backbone_from_config(config: PretrainedConfig, task: Task = "classification") -> nn.Module:
    """A randomly initialised model from a config (base model, or ``*ForCausalLM`` for LM)."""
    factory = AutoModelForCausalLM if task == "causal_lm" else AutoModel
    return factory.from_config(config)


def tiny_task_model(
    model_type: str, prompt_len: int = 0, readout: Readout | None = None, num_labels: int = 3,
    seed: int = 0, deep_prompts: bool = False, **overrides: Any,
) -> TaskModel:
    """A seeded tiny :class:`TaskModel` in eval mode: llama as causal LM, the rest classify."""
    torch.manual_seed(seed)
    task: Task = "causal_lm" if model_type == "llama" else "classification"
    hf = backbone_from_config(tiny_config(model_type, **overrides), task)
    model = build_task_model(
        hf, task, num_labels=num_labels, prompt_len=prompt_len, deep_prompts=deep_prompts,
        readout=readout,
    )
    return model.eval()


def tiny_batch(
    model_type: str, batch_size: int = 3, seq_len: int = 8, padding: str = "none",
    num_labels: int = 3, seed: int = 1,
) -> dict[str, torch.Tensor]:
    """A synthetic batch for :func:`tiny_task_model`: images (B, 3, 16, 16) or ids (B, T).

    ``padding`` (text): ``none``, ``right`` or ``left``; rows 2 and 3 lose 3 and 5 tokens.
    Causal LM labels are the ids with -100 at padding.
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_labels, (batch_size,), generator=g)
    if arch_for_type(model_type).modality == "image":
        return {"pixel_values": torch.randn(batch_size, 3, 16, 16, generator=g), "labels": labels}
    ids = torch.randint(1, 99, (batch_size, seq_len), generator=g)
    mask = torch.ones(batch_size, seq_len, dtype=torch.long)
    if padding not in ("none", "right", "left"):
        raise ValueError(f"padding must be none, right or left, got {padding!r}")
    for i, n_pad in enumerate([0, 3, 5][:batch_size] if padding != "none" else []):
        if n_pad:
            mask[i, slice(seq_len - n_pad, None) if padding == "right" else slice(0, n_pad)] = 0
    ids = ids.masked_fill(mask == 0, 0)
    if model_type == "llama":
        labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# SmolLM2's ChatML turn format, the template the tiny tokenizer carries
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_chat_tokenizer(texts: list[str], chat_template: str | None = CHATML) -> Any:
    """A real (fast) Hugging Face tokenizer built in memory: one id per lower-cased word or
    punctuation mark of ``texts`` (unknown words -> ``<unk>``), ChatML special tokens, and the
    ChatML chat template (``None``: no template). For tests with tiny random Llama models."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    words = sorted({w for t in texts for w in pre_tokenizers.Whitespace().pre_tokenize_str(t.lower())
                    for w in [w[0]]} | {"system", "user", "assistant"})
    vocab = {w: i for i, w in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(specials)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   eos_token="<|im_end|>", bos_token="<|endoftext|>")
    fast.chat_template = chat_template
    return fast
