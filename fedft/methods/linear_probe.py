"""Linear probing: only the new classifier trains; the backbone is frozen.

What trains and travels: the output layer (``classifier.*``; the LM head for causal LM).
"""

from __future__ import annotations

from torch import nn

from fedft.methods.base import BaseMethod, freeze_all, register_method, unfreeze


@register_method("linear_probe")
class LinearProbe(BaseMethod):
    description = "train only a new linear classifier on frozen features"
    head_only = True

    def apply(self, model: nn.Module) -> None:
        freeze_all(model)
        unfreeze([model.output_layer])
