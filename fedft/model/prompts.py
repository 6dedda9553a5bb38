"""Soft prompts as in Visual Prompt Tuning: learnable tokens spliced into the embedded sequence.

Jia et al., "Visual Prompt Tuning", ECCV 2022, https://arxiv.org/abs/2203.12119.

Shallow prompts (P, D) are inserted once, after the embeddings (position embeddings already
added, so prompts get none of their own): after CLS for models with one, at the start for
decoder LMs. Deep prompts (VPT-deep) add a fresh (P, D) set before each later block, replacing
the previous block's prompt outputs; they need every block in one place (central runs only).
What trains: the ``prompt_``-prefixed tensors. What travels in split training: nothing extra;
the prompts are rows of the head output.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class SoftPrompt(nn.Module):
    """``n_tokens`` prompt vectors of size ``dim``, plus ``deep_layers`` fresh sets for VPT-deep.

    ``fan_in`` sets the Xavier-uniform bound ``sqrt(6 / (fan_in + dim))``; VPT uses
    ``3 * patch * patch`` for images (default: ``dim``).
    """

    def __init__(
        self, n_tokens: int, dim: int, deep_layers: int = 0, dropout: float = 0.0,
        fan_in: int | None = None,
    ) -> None:
        super().__init__()
        if n_tokens < 1:
            raise ValueError(f"n_tokens must be >= 1, got {n_tokens}")
        if deep_layers < 0:
            raise ValueError(f"deep_layers must be >= 0, got {deep_layers}")
        self.n_tokens, self.dim, self.deep_layers = n_tokens, dim, deep_layers
        bound = math.sqrt(6.0 / float((fan_in or dim) + dim))
        self.prompt_embeddings = nn.Parameter(torch.empty(n_tokens, dim).uniform_(-bound, bound))
        self.prompt_deep: nn.Parameter | None = None
        if deep_layers:
            self.prompt_deep = nn.Parameter(
                torch.empty(deep_layers, n_tokens, dim).uniform_(-bound, bound)
            )
        self.dropout = nn.Dropout(dropout)

    def insert(self, h: torch.Tensor, at: int) -> torch.Tensor:
        """Splice the shallow prompts into ``h`` (B, T, D) at index ``at``: (B, T + P, D)."""
        p = self.dropout(self.prompt_embeddings).to(h.dtype)  # (P, D)
        p = p.unsqueeze(0).expand(h.shape[0], -1, -1)  # (B, P, D)
        return torch.cat([h[:, :at], p, h[:, at:]], dim=1)

    def replace(self, h: torch.Tensor, layer: int, at: int) -> torch.Tensor:
        """VPT-deep: put deep set ``layer`` (0-based) in place of the prompt rows of ``h``."""
        if self.prompt_deep is None or not 0 <= layer < self.deep_layers:
            raise IndexError(f"no deep prompt set {layer} (deep_layers={self.deep_layers})")
        p = self.dropout(self.prompt_deep[layer]).to(h.dtype)  # (P, D)
        p = p.unsqueeze(0).expand(h.shape[0], -1, -1)  # (B, P, D)
        return torch.cat([h[:, :at], p, h[:, at + self.n_tokens :]], dim=1)

    def extend_mask(self, mask: torch.Tensor | None, at: int = 0) -> torch.Tensor | None:
        """Insert ones for the prompt positions into the (B, T) mask: (B, T + P)."""
        if mask is None:
            return None
        ones = mask.new_ones(mask.shape[0], self.n_tokens)  # (B, P)
        return torch.cat([mask[:, :at], ones, mask[:, at:]], dim=1)
