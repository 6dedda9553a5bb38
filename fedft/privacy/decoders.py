"""Learned (black-box) attacks: models trained on auxiliary data to map what the client sends back
to its input. The attacker never uses the head's weights at attack time, only (input, activation)
pairs from data disjoint from the clients' (the head is public, so it can make such pairs).

* :class:`PatchDecoder`: for images; one MLP per token maps each patch token to that patch's
  pixels, the patches are tiled into an image and resized to the raw resolution.
* :func:`fit_token_probe`: for text; a linear probe from each token's activation to its token id,
  over the vocabulary seen in the auxiliary data.
* :func:`nearest_tokens`: for text, no training: the vocabulary entry whose embedding (at that
  position) is nearest to the observed activation (exact when nothing runs before the cut).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class PatchDecoder(nn.Module):
    """Patch tokens (B, N, D), N = g * g, to grey images (B, raw, raw) in [0, 1]."""

    def __init__(self, dim: int, patch: int, grid: int, raw: int, hidden: int = 512) -> None:
        super().__init__()
        self.patch, self.grid, self.raw = patch, grid, raw
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(),
                                 nn.Linear(hidden, patch * patch))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, g, p = tokens.shape[0], self.grid, self.patch
        tiles = self.net(tokens).view(b, g, g, p, p).permute(0, 1, 3, 2, 4).reshape(b, 1, g * p, g * p)
        img = F.interpolate(tiles, size=(self.raw, self.raw), mode="area")  # (B, 1, raw, raw)
        return torch.sigmoid(img[:, 0])


def fit(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], epochs: int, lr: float = 1e-3,
        batch_size: int = 64, seed: int = 0) -> list[float]:
    """Adam on ``loss_fn(model(inputs[i]), targets[i])`` over shuffled minibatches; mean loss per epoch."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    model.train()
    for _ in range(epochs):
        order, total = torch.randperm(len(inputs), generator=gen), 0.0
        for start in range(0, len(inputs), batch_size):
            idx = order[start:start + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(inputs[idx]), targets[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / len(inputs))
    model.eval()
    return losses


def fit_patch_decoder(tokens: torch.Tensor, images: torch.Tensor, patch: int, epochs: int = 20,
                      seed: int = 0) -> PatchDecoder:
    """A :class:`PatchDecoder` trained by MSE on auxiliary (patch tokens (B, N, D), images (B, raw, raw))."""
    torch.manual_seed(seed)
    grid = int(round(tokens.shape[1] ** 0.5))
    dec = PatchDecoder(tokens.shape[-1], patch, grid, images.shape[-1])
    fit(dec, tokens, images, F.mse_loss, epochs, seed=seed)
    return dec


class TokenProbe(nn.Module):
    """Linear probe from a token activation (D) to one of ``vocab`` token ids."""

    def __init__(self, dim: int, vocab: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("vocab", vocab)
        self.linear = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, len(vocab)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.vocab[self(x).argmax(dim=-1)]


def fit_token_probe(acts: torch.Tensor, ids: torch.Tensor, epochs: int = 5, seed: int = 0) -> TokenProbe:
    """A :class:`TokenProbe` over the ids seen in the auxiliary tokens (acts (N, D), ids (N,))."""
    torch.manual_seed(seed)
    vocab, target = torch.unique(ids, return_inverse=True)
    probe = TokenProbe(acts.shape[-1], vocab)
    fit(probe, acts, target, F.cross_entropy, epochs, lr=3e-3, batch_size=256, seed=seed)
    return probe


def nearest_tokens(embed: Callable[[torch.Tensor], torch.Tensor], observed: torch.Tensor, vocab_size: int,
                   chunk: int = 256) -> torch.Tensor:
    """Per position, the token id whose embedding there is nearest (L2) to ``observed`` (B, T, D).

    ``embed(ids)`` maps token ids (V, T) to the activations the client would send (V, T, D), so
    position-dependent embeddings (BERT's absolute positions, its LayerNorm) are compared at the
    right position."""
    b, t, _ = observed.shape
    obs = observed.float().transpose(0, 1)  # (T, B, D)
    best = torch.full((t, b), float("inf"))
    arg = torch.zeros((t, b), dtype=torch.long)
    with torch.no_grad():
        for start in range(0, vocab_size, chunk):
            ids = torch.arange(start, min(start + chunk, vocab_size))
            cand = embed(ids[:, None].expand(-1, t)).float().transpose(0, 1)  # (T, V_c, D)
            d = torch.cdist(obs, cand)  # (T, B, V_c)
            val, idx = d.min(dim=-1)
            better = val < best
            best = torch.where(better, val, best)
            arg = torch.where(better, idx + start, arg)
    return arg.T  # (B, T)
