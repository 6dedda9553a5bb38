"""LoRA through peft: low-rank updates ``W + (alpha / r) B A`` on chosen block linears.

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022,
https://arxiv.org/abs/2106.09685; see docs/methods.md. peft's ``LoraConfig`` and
``inject_adapter_in_model`` do the work; this module only maps block roles (``q, v``; see
:func:`~fedft.methods.base.block_linears`) to module names.

What trains and travels: ``*.lora_A.default.weight``, ``*.lora_B.default.weight`` and the new
classifier. ``finalize`` merges ``B A`` into the base weights (outputs unchanged).
Split strategies: yes on any client-held linear (head or tail blocks); with ``SplitSpec(0, 0)``
no block is client-held, so only the classifier trains on the client.
"""

from __future__ import annotations

from dataclasses import dataclass

from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from fedft.errors import check
from fedft.methods.base import (
    BaseMethod,
    freeze_all,
    new_head,
    parse_roles,
    register_method,
    role_modules,
    unfreeze,
)


@dataclass(frozen=True)
class LoraOptions:
    """``[method.lora]``: LoRA through peft (Hu et al. 2021); targets are block roles."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: str = "q,v"

    def __post_init__(self) -> None:
        check(self.rank >= 1, "method.lora.rank", "an integer >= 1")
        check(0 <= self.dropout < 1, "method.lora.dropout", "a float in [0, 1)")
        parse_roles(self.targets, "method.lora.targets")


def backbone_targets(model: nn.Module, roles: tuple[str, ...]) -> list[str]:
    """Names of the role linears relative to ``model.backbone`` (peft's target names)."""
    return [n.removeprefix("backbone.") for n in role_modules(model, roles)]


def inject_lora(model: nn.Module, roles: tuple[str, ...], rank: int, alpha: float,
                dropout: float = 0.0) -> None:
    """Add peft LoRA layers to the backbone's ``roles`` linears (lora_B starts at zero)."""
    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                     target_modules=backbone_targets(model, roles))
    inject_adapter_in_model(cfg, model.backbone)


def merge_adapters(model: nn.Module) -> None:
    """Merge every peft adapter into its base layer (peft's own ``merge``)."""
    for m in model.modules():
        if isinstance(m, BaseTunerLayer) and not m.merged:
            m.merge()


@register_method("lora", LoraOptions)
class Lora(BaseMethod):
    description = "low-rank adapters (peft LoRA) on chosen block linears and a new classifier"

    def apply(self, model: nn.Module) -> None:
        o = self.options
        freeze_all(model)
        inject_lora(model, parse_roles(o.targets, "method.lora.targets"), o.rank, o.alpha, o.dropout)
        for n, p in model.named_parameters():
            p.requires_grad_("lora_" in n)
        unfreeze([new_head(model)])

    def finalize(self, model: nn.Module) -> None:
        merge_adapters(model)
