"""The training-loss interface and its registry.

A loss plugin replaces the plain token-mean cross entropy of causal-LM fine-tuning. It sees the
logits and the whole batch (labels, ``task_ids`` per sample or per token, ``segment_ids`` for
packed rows) and returns a scalar. A loss that adapts during training (CoBa's task weights)
also gets each evaluation's per-task validation losses through :meth:`Loss.observe`.

A loss registers itself with :func:`register_loss`, which also declares its options dataclass
(the ``[loss.<name>]`` table).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from fedft.options import plugin_registrar
from fedft.registry import Registry


class Loss:
    """Base class: ``loss(logits, batch)`` -> scalar; ``observe(step, val_losses)`` between updates."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    kind: ClassVar[str] = "loss"
    Options: ClassVar[type | None] = None

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else (self.Options() if self.Options else None)

    def __call__(self, logits: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def observe(self, step: int, val_losses: Mapping[int, float]) -> None:
        """Per-task validation losses (task id -> mean token loss) measured at ``step``; no-op by default."""


LOSSES: Registry[type[Loss]] = Registry("loss")

#: ``@register_loss("name", NameOptions)``: register a loss and its ``[loss.<name>]`` table
register_loss = plugin_registrar(LOSSES, "loss")
