"""SSF: scale and shift every feature channel, ``y = gamma * x + beta``, then merge for inference.

Lian et al., "Scaling & Shifting Your Features: A New Baseline for Efficient Model Tuning",
NeurIPS 2022, https://arxiv.org/abs/2210.08823, github dongzelian/SSF; see docs/methods.md.

``apply`` registers ``ssf_scale`` (C,) ~ N(1, std^2) and ``ssf_shift`` (C,) ~ N(0, std^2) on
every backbone ``Linear``, ``Conv2d`` (patch projection) and ``LayerNorm`` (not RMSNorm, which
cannot carry a shift; not the unused pooler) and a forward hook applying them to the output
channels. ``finalize`` folds them into the preceding op, exactly: ``W' = diag(gamma) W``,
``b' = gamma * b + beta`` (a bias is created where there was none), then removes hooks and vectors.

What trains and travels: every ``*.ssf_scale`` / ``*.ssf_shift`` and the new classifier.
Split strategies: a very good fit; the vectors sit on the module they scale, so they land in
the head, body or tail with it, and FedAvg of (gamma, beta) is well defined.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedft.errors import check
from fedft.methods.base import BaseMethod, freeze_all, new_head, register_method, unfreeze

_HOOK = "_ssf_hook_handle"


@dataclass(frozen=True)
class SSFOptions:
    """``[method.ssf]``: per-channel scale and shift after every linear, norm and patch projection."""

    init_std: float = 0.02
    # [paper] also after LayerNorms (SSF follows every op; not RMSNorm: it cannot take a shift)
    norms: bool = True

    def __post_init__(self) -> None:
        check(self.init_std >= 0, "method.ssf.init_std", "a float >= 0")


def _ssf_hook(module: nn.Module, inputs: Any, out: torch.Tensor) -> torch.Tensor:
    shape = (-1, 1, 1) if isinstance(module, nn.Conv2d) else (-1,)  # channels: dim 1 or last
    return out * module.ssf_scale.view(shape) + module.ssf_shift.view(shape)


def ssf_targets(model: nn.Module, norms: bool = True) -> list[tuple[str, nn.Module]]:
    """Backbone modules that get an SSF map (linears, convolutions, LayerNorms)."""
    kinds: tuple[type, ...] = (nn.Linear, nn.Conv2d) + ((nn.LayerNorm,) if norms else ())
    return [(n, m) for n, m in model.named_modules()
            if n.startswith("backbone.") and ".pooler" not in n and isinstance(m, kinds)]


def _channels(m: nn.Module) -> int:
    if isinstance(m, nn.Linear):
        return m.out_features
    if isinstance(m, nn.Conv2d):
        return m.out_channels
    return m.normalized_shape[0]


@torch.no_grad()
def merge_ssf(model: nn.Module) -> int:
    """Fold every SSF map into its module and remove it; returns how many were merged."""
    n = 0
    for m in model.modules():
        if not hasattr(m, "ssf_scale"):
            continue
        g, b = m.ssf_scale.detach(), m.ssf_shift.detach()  # (C,)
        w = m.weight
        w.mul_(g.view(-1, *([1] * (w.dim() - 1))))  # scale output rows / filters
        if m.bias is None:
            m.bias = nn.Parameter(torch.zeros_like(g), requires_grad=False)
        m.bias.mul_(g).add_(b)
        getattr(m, _HOOK).remove()
        del m.ssf_scale, m.ssf_shift
        delattr(m, _HOOK)
        n += 1
    return n


@register_method("ssf", SSFOptions)
class SSF(BaseMethod):
    description = "per-channel scale and shift after every op (SSF), merged into the weights after training"

    def apply(self, model: nn.Module) -> None:
        o = self.options
        freeze_all(model)
        for _, m in ssf_targets(model, o.norms):
            c = _channels(m)
            m.ssf_scale = nn.Parameter(1 + o.init_std * torch.randn(c))
            m.ssf_shift = nn.Parameter(o.init_std * torch.randn(c))
            setattr(m, _HOOK, m.register_forward_hook(_ssf_hook))
        unfreeze([new_head(model)])

    def finalize(self, model: nn.Module) -> None:
        merge_ssf(model)
