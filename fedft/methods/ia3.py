"""(IA)^3 through peft: learned per-channel rescaling of keys, values and FFN inputs.

Liu et al., "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
Learning", NeurIPS 2022, https://arxiv.org/abs/2205.05638; see docs/methods.md. peft's
``IA3Config`` with its defaults (k, v, FFN down projection input) mapped to block roles.

What trains and travels: ``*.ia3_l.default`` vectors and the new classifier. ``finalize``
merges the scales into the base weights (outputs unchanged). Split strategies: yes on any
client-held linear; the vectors are tiny to send.
"""

from __future__ import annotations

from dataclasses import dataclass

from peft import IA3Config, inject_adapter_in_model
from torch import nn

from fedft.errors import check
from fedft.methods.base import BaseMethod, freeze_all, new_head, parse_roles, register_method, unfreeze
from fedft.methods.lora import backbone_targets, merge_adapters


@dataclass(frozen=True)
class IA3Options:
    """``[method.ia3]``: (IA)^3 through peft; ``feedforward`` roles scale the input, the others the
    output."""

    # [paper] keys, values and the FFN down projection's input (peft's IA3Config defaults)
    targets: str = "k,v,down"
    feedforward: str = "down"

    def __post_init__(self) -> None:
        t = parse_roles(self.targets, "method.ia3.targets")
        f = parse_roles(self.feedforward, "method.ia3.feedforward")
        check(set(f) <= set(t), "method.ia3.feedforward", "a subset of method.ia3.targets")


@register_method("ia3", IA3Options)
class IA3(BaseMethod):
    description = "(IA)^3 learned rescaling vectors (peft) on keys, values and FFN inputs"

    def peft_config(self, model: nn.Module) -> IA3Config:
        """The peft config this method injects (also used by tests to build peft's model)."""
        o = self.options
        return IA3Config(
            target_modules=backbone_targets(model, parse_roles(o.targets, "method.ia3.targets")),
            feedforward_modules=backbone_targets(model, parse_roles(o.feedforward, "method.ia3.feedforward")),
        )

    def apply(self, model: nn.Module) -> None:
        freeze_all(model)
        inject_adapter_in_model(self.peft_config(model), model.backbone)
        for n, p in model.named_parameters():
            p.requires_grad_("ia3_" in n)
        unfreeze([new_head(model)])

    def finalize(self, model: nn.Module) -> None:
        merge_adapters(model)
