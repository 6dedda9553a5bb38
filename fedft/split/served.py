"""A split model evaluated as it is served: head, the wire at the cut, body, the wire again, tail.

A client trained over a lossy split wire (``split.wire_dtype`` = ``int8``, ``int4``, ``topk``...)
fits its tail to decoded body outputs, and a deployed split model runs inference over the same
wire. Evaluating the chained model in one process would show it clean features it never trained
on, and would not be the accuracy a user of the deployed model gets. So the server's validation
and test evaluations, and ``fedft evaluate``, pass each cut's activations through the run's
activation format (:func:`fedft.body.codec.to_wire`: cast, or encode and decode). With ``fp32``
this changes nothing, and :func:`served` returns the model itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from fedft.body.codec import check_wire_dtype, to_wire
from fedft.split.parts import SplitParts


class OverTheWire(nn.Module):
    """``model`` run through ``parts`` with the activations at both cuts in format ``wire``.

    ``model`` is a submodule (``eval()`` and ``train()`` reach all of it); ``loss`` is the model's."""

    def __init__(self, model: nn.Module, parts: SplitParts, wire: str) -> None:
        super().__init__()
        self.model = model
        object.__setattr__(self, "parts", parts)  # holds the model's modules by reference
        self.wire = check_wire_dtype(wire)

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        h, mask = self.parts.head(batch)
        z = self.parts.body(to_wire(h, self.wire).to(h.dtype), mask)
        return self.parts.tail(to_wire(z, self.wire).to(z.dtype), mask)

    def loss(self, logits: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        return self.model.loss(logits, batch)  # type: ignore[operator]


def served(model: nn.Module, parts: SplitParts | None, wire: str) -> nn.Module:
    """What evaluation should run: ``model`` itself unless it is split with a non-fp32 wire."""
    if parts is None or check_wire_dtype(wire) == "fp32":
        return model
    return OverTheWire(model, parts, wire)
