"""(IA)^3 through peft: learned per-channel rescaling of keys, values and FFN inputs.

Liu et al., "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
Learning", NeurIPS 2022, https://arxiv.org/abs/2205.05638 (spec section 7). peft's
``IA3Config`` with its defaults (k, v, FFN down projection input) mapped to block roles.

What trains and travels: ``*.ia3_l.default`` vectors and the new classifier. ``finalize``
merges the scales into the base weights (outputs unchanged). Split strategies: yes on any
client-held linear; the vectors are tiny to send.
"""

from __future__ import annotations

from peft import IA3Config, inject_adapter_in_model
from torch import nn

from fedft.method_configs import parse_roles
from fedft.methods.base import METHODS, BaseMethod, freeze_all, unfreeze
from fedft.methods.lora import backbone_targets, merge_adapters


@METHODS.register("ia3")
class IA3(BaseMethod):
    description = "(IA)^3 learned rescaling vectors (peft) on keys, values and FFN inputs"

    def peft_config(self, model: nn.Module) -> IA3Config:
        """The peft config this method injects (also used by tests to build peft's model)."""
        o = self.cfg.ia3
        return IA3Config(
            target_modules=backbone_targets(model, parse_roles(o.targets, "method.ia3.targets")),
            feedforward_modules=backbone_targets(model, parse_roles(o.feedforward, "method.ia3.feedforward")),
        )

    def apply(self, model: nn.Module) -> None:
        freeze_all(model)
        inject_adapter_in_model(self.peft_config(model), model.backbone)
        for n, p in model.named_parameters():
            p.requires_grad_("ia3_" in n)
        unfreeze([model.output_layer])

    def finalize(self, model: nn.Module) -> None:
        merge_adapters(model)
