"""Full fine-tuning: every backbone weight and the new classifier train (and travel)."""

from __future__ import annotations

from torch import nn

from fedft.methods.base import BaseMethod, register_method


@register_method("full_ft")
class FullFT(BaseMethod):
    description = "train every weight of the backbone and the new classifier"

    def apply(self, model: nn.Module) -> None:
        for p in model.parameters():
            p.requires_grad_(True)
