"""The training-loss interface and its registry.

A loss plugin replaces the plain token-mean cross entropy of causal-LM fine-tuning. It sees the
logits and the whole batch (labels, ``task_ids`` per sample or per token, ``segment_ids`` for
packed rows) and returns a scalar. A loss that adapts during training (CoBa's task weights)
also gets each evaluation's per-task validation losses through :meth:`Loss.observe`.

A loss registers itself with :func:`register_loss`, which also declares its options dataclass
(the ``[loss.<name>]`` table).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
    # trains on plain SFT batches (what train.loss may select); False: needs other batches (DPO's pairs)
    sft: ClassVar[bool] = True

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else (self.Options() if self.Options else None)
        self.tasks: tuple[str, ...] = ()  # task names by id, once bound to a run's data

    def bind_tasks(self, tasks: Sequence[str]) -> None:
        """Name the task ids of the batches (``tasks[i]`` is task id i), for options that name tasks."""
        self.tasks = tuple(tasks)

    def __call__(self, logits: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    @property
    def adaptive(self) -> bool:
        """Whether the loss needs :meth:`observe` (per-task validation losses during training)."""
        return False

    def observe(self, step: int, val_losses: Mapping[int, float]) -> None:
        """Per-task validation losses (task id -> mean token loss) measured at ``step``; no-op by default."""

    def report(self) -> dict[str, Any]:
        """What the loss has to say about its state (task weights, ...), JSON-serialisable."""
        return {}


LOSSES: Registry[type[Loss]] = Registry("loss")

#: ``@register_loss("name", NameOptions)``: register a loss and its ``[loss.<name>]`` table
register_loss = plugin_registrar(LOSSES, "loss")
