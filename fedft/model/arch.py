"""Per-architecture accessors for Hugging Face base models, registered by ``config.model_type``.

An adapter knows four things about a base model (``ViTModel``, ``Dinov2Model``, ``BertModel``,
``LlamaModel``): how to embed a batch, where the block list is, how to run blocks, and which
final norm follows them. Blocks are run exactly as the model's own ``forward`` runs them, with
the same ``transformers.masking_utils`` helpers, so a split model matches the unsplit one.

Only the ``(B, T)`` padding mask ever crosses a cut (as ``bool``, one byte per token). Each side
rebuilds the 4-D attention mask, and for Llama the positions (``cumsum(mask) - 1``, as in
``generate`` with left or right padding) and the rotary embeddings, from that mask.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

from fedft.registry import Registry

Batch = Mapping[str, torch.Tensor]


class Arch:
    """Adapter interface; subclasses fill in the attribute names of one model family."""

    modality: str = "image"  # "image" (pixel_values) or "text" (input_ids, attention_mask)
    has_cls: bool = True
    cls_index: int | None = 0

    @property
    def prompt_index(self) -> int:
        """Where shallow prompts go: right after CLS, or at the start without one."""
        return 1 if self.has_cls else 0

    def embedding_module(self, backbone: nn.Module) -> nn.Module:
        """The module whose output is the embedded sequence (it holds every input-side weight)."""
        return backbone.embeddings

    def embed(self, backbone: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Embeddings with position embeddings, ``(B, T, D)``, and the ``(B, T)`` bool mask."""
        raise NotImplementedError

    def blocks(self, backbone: nn.Module) -> nn.ModuleList:
        """The transformer block list."""
        raise NotImplementedError

    def final_norm(self, backbone: nn.Module) -> nn.Module | None:
        """The norm after the last block (``None`` when the model has none, as BERT)."""
        return backbone.layernorm

    def run_blocks(
        self, backbone: nn.Module, blocks: Sequence[nn.Module], h: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Run ``blocks`` in order on ``h`` (B, T, D); the 4-D mask is built once, here."""
        attn = create_bidirectional_mask(config=backbone.config, inputs_embeds=h, attention_mask=mask)
        for block in blocks:
            h = block(h, attn)
        return h

    def run_block(
        self, backbone: nn.Module, block: nn.Module, h: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Run one block on ``h`` (B, T, D) with the mask rebuilt from the (B, T) mask."""
        return self.run_blocks(backbone, [block], h, mask)

    def finish(self, backbone: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """Apply the final norm (identity when there is none)."""
        norm = self.final_norm(backbone)
        return h if norm is None else norm(h)


ARCHS: Registry[type[Arch]] = Registry("architecture")


def _bool_mask(batch: Batch) -> torch.Tensor | None:
    mask = batch.get("attention_mask")
    return None if mask is None else mask.to(torch.bool)  # (B, T)


@ARCHS.register("vit")
class ViTArch(Arch):
    """``ViTModel``: CLS + patches + learned positions, pre-norm blocks, final LayerNorm."""

    def embed(self, backbone: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        pixels = batch["pixel_values"]
        pixels = pixels.to(backbone.embeddings.patch_embeddings.projection.weight.dtype)
        interpolate = bool(batch.get("interpolate_pos_encoding", False))
        return backbone.embeddings(pixels, interpolate_pos_encoding=interpolate), None

    def blocks(self, backbone: nn.Module) -> nn.ModuleList:
        return backbone.layers


@ARCHS.register("dinov2")
class Dinov2Arch(Arch):
    """``Dinov2Model``: like ViT with LayerScale and interpolated position embeddings."""

    def embed(self, backbone: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        return backbone.embeddings(batch["pixel_values"]), None

    def blocks(self, backbone: nn.Module) -> nn.ModuleList:
        return backbone.encoder.layer


@ARCHS.register("bert")
class BertArch(Arch):
    """``BertModel`` as an encoder: post-norm blocks, no norm after the last block."""

    modality = "text"

    def embed(self, backbone: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        if backbone.config.is_decoder:
            raise ValueError("the bert adapter runs BERT as a bidirectional encoder; is_decoder=True")
        h = backbone.embeddings(
            input_ids=batch["input_ids"], token_type_ids=batch.get("token_type_ids")
        )
        return h, _bool_mask(batch)

    def blocks(self, backbone: nn.Module) -> nn.ModuleList:
        return backbone.encoder.layer

    def final_norm(self, backbone: nn.Module) -> nn.Module | None:
        return None


def llama_positions(mask: torch.Tensor | None, h: torch.Tensor) -> torch.Tensor:
    """Positions from the (B, T) mask: ``cumsum - 1``, padding set to 1 (as in ``generate``)."""
    if mask is None:
        return torch.arange(h.shape[1], device=h.device).unsqueeze(0)  # (1, T)
    pos = mask.long().cumsum(-1) - 1  # (B, T)
    return pos.masked_fill(~mask, 1)


@ARCHS.register("llama")
class LlamaArch(Arch):
    """``LlamaModel``: token embeddings only; causal mask and rotary positions per block run."""

    modality = "text"
    has_cls = False
    cls_index = None

    def embedding_module(self, backbone: nn.Module) -> nn.Module:
        return backbone.embed_tokens

    def embed(self, backbone: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        return backbone.embed_tokens(batch["input_ids"]), _bool_mask(batch)

    def blocks(self, backbone: nn.Module) -> nn.ModuleList:
        return backbone.layers

    def final_norm(self, backbone: nn.Module) -> nn.Module | None:
        return backbone.norm

    def run_blocks(
        self, backbone: nn.Module, blocks: Sequence[nn.Module], h: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        pos = llama_positions(mask, h)  # (B, T) or (1, T)
        causal = create_causal_mask(
            config=backbone.config, inputs_embeds=h, attention_mask=mask, position_ids=pos, **{CACHE_KW: None},
        )
        rope = backbone.rotary_emb(h, position_ids=pos)  # (cos, sin), each (B, T, head_dim)
        for block in blocks:
            h = block(
                h, attention_mask=causal, position_embeddings=rope, position_ids=pos, use_cache=False,
            )
        return h


#: create_causal_mask's name for the KV cache: ``cache`` in newer transformers (which warn on the
#: old name), ``past_key_values`` before
CACHE_KW = "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"


def arch_for(backbone: nn.Module) -> Arch:
    """The adapter for a base model, looked up by ``backbone.config.model_type``."""
    return ARCHS.get(backbone.config.model_type)()
