"""Client-side defences against what the server learns from the activations it receives.

* **Activation noise** (``split.noise``, [D] off): the client adds Gaussian noise to what it sends,
  with a standard deviation of ``noise`` times the root-mean-square of that sample's activations
  (so one scale means the same signal-to-noise ratio at every cut and for every model). It is a
  forward hook on the module at the cut (the embeddings for ``head_blocks = 0``, else block
  ``head_blocks - 1``), so it acts on every pass through the client head: split training,
  evaluation (inference traffic leaks too), EL2N scoring and the local-loss update.
* **NoPeek** (``split.nopeek``, [D] off; Vepakomma et al., 2020, "NoPeek: information leakage
  reduction to share activations in distributed deep learning"): the distance correlation between
  each batch's inputs and the activations the client sends, times ``nopeek``, is added to the
  client's loss in split training, so whatever the client trains before the cut learns to send
  activations that say less about the input. It needs a head that shapes the sent activations:
  with ``head_blocks = 0`` the sent patch or token embeddings do not depend on anything the client
  trains (prompts are separate rows), so the penalty would have no gradient and is refused.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

if TYPE_CHECKING:
    from fedft.model.task import TaskModel


def cut_module(model: TaskModel, head_blocks: int) -> nn.Module:
    """The module whose output the client sends: the embeddings, or the last head block."""
    if head_blocks == 0:
        return model.arch.embedding_module(model.backbone)
    return model.blocks[head_blocks - 1]


class ActivationNoise:
    """The noise hook on the cut module (``model.activation_noise`` once installed).

    ``with noise.disabled():`` runs the head without it (an attacker's copy of the public head)."""

    def __init__(self, model: TaskModel, head_blocks: int, scale: float) -> None:
        if scale < 0:
            raise ValueError(f"split.noise must be >= 0, got {scale}")
        self.scale, self.enabled = scale, True
        self.handle: RemovableHandle = cut_module(model, head_blocks).register_forward_hook(self._hook)

    def _noisy(self, x: torch.Tensor) -> torch.Tensor:
        rms = x.detach().float().pow(2).flatten(1).mean(dim=1).sqrt()  # (B,)
        std = (self.scale * rms).to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        return x + std * torch.randn_like(x)

    def _hook(self, _module: nn.Module, _inputs: Any, output: Any) -> Any:
        if not self.enabled or not self.scale:
            return None
        if isinstance(output, torch.Tensor):
            return self._noisy(output)
        return (self._noisy(output[0]), *output[1:])  # blocks that return (hidden, ...)

    @contextmanager
    def disabled(self) -> Iterator[None]:
        saved, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = saved


def add_activation_noise(model: TaskModel, head_blocks: int, scale: float) -> ActivationNoise:
    """Install the noise hook on ``model``'s cut module and keep it as ``model.activation_noise``."""
    noise = ActivationNoise(model, head_blocks, scale)
    object.__setattr__(model, "activation_noise", noise)  # a plain attribute, not a submodule
    return noise


def noise_off(model: nn.Module) -> AbstractContextManager[None]:
    """Run ``model`` without its activation noise (a no-op when it has none)."""
    noise = getattr(model, "activation_noise", None)
    return noise.disabled() if noise is not None else nullcontext()


def _centred_distances(x: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(x, x)  # (B, B)
    return d - d.mean(dim=0, keepdim=True) - d.mean(dim=1, keepdim=True) + d.mean()


def distance_correlation(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Sample distance correlation (Székely et al., 2007) of two batches, each (B, ...): in [0, 1],
    0 when the batches are independent; differentiable in both."""
    a, b = _centred_distances(x.flatten(1).float()), _centred_distances(y.flatten(1).float())
    dcov_xy = (a * b).mean().clamp(min=0)
    dcov_xx, dcov_yy = (a * a).mean(), (b * b).mean()
    return (dcov_xy / (dcov_xx * dcov_yy).sqrt().clamp(min=eps)).sqrt()


def raw_input(model: TaskModel, batch: Mapping[str, Any]) -> torch.Tensor:
    """What NoPeek decorrelates the sent activations from: the pixels (B, C, H, W), or for text the
    (frozen) word embeddings of the input tokens (B, T, D), token ids having no distance."""
    if "pixel_values" in batch:
        return batch["pixel_values"]
    with torch.no_grad():
        return model.backbone.get_input_embeddings()(batch["input_ids"])
