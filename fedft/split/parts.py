"""``split_model``: cut a :class:`~fedft.model.task.TaskModel` into head, body and tail modules.

The three parts hold the model's own submodules by reference (no copies), so an optimizer on
the parts trains the model and vice versa. Boundaries are explicit tensors::

    h, mask = head(batch)      # embeddings + prompts + first h blocks: (B, T, D), (B, T) | None
    z       = body(h, mask)    # middle blocks (server): (B, T, D)
    logits  = tail(z, mask)    # last t blocks + final norm + readout + output layer

``tail(h, mask)`` also accepts the head output directly (EL2N scoring and the local-loss update
skip the body). Only the (B, T) mask crosses a cut; each part rebuilds attention masks from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fedft.split.spec import SplitSpec

if TYPE_CHECKING:
    from fedft.model.task import TaskModel


class _Part(nn.Module):
    """A part: registers only its own submodules and keeps the model as a plain reference."""

    model: TaskModel

    def __init__(self, model: TaskModel, blocks: list[nn.Module]) -> None:
        super().__init__()
        object.__setattr__(self, "model", model)  # not a submodule: parameters stay per part
        self.blocks = nn.ModuleList(blocks)


class Head(_Part):
    """Client input side: embeddings, prompt insertion with mask extension, first h blocks."""

    def __init__(self, model: TaskModel, blocks: list[nn.Module]) -> None:
        super().__init__(model, blocks)
        self.embeddings = model.arch.embedding_module(model.backbone)
        self.prompt = model.prompt

    def forward(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        h, mask = self.model.embed(batch)  # (B, T + P, D), (B, T + P) | None
        return self.model.run_blocks(self.blocks, h, mask), mask


class Body(_Part):
    """Server middle: blocks h .. L - t - 1 (possibly none, then the identity)."""

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.model.run_blocks(self.blocks, h, mask)  # (B, T, D)


class Tail(_Part):
    """Client output side: last t blocks, final norm, readout and output layer."""

    def __init__(self, model: TaskModel, blocks: list[nn.Module]) -> None:
        super().__init__(model, blocks)
        norm = model.arch.final_norm(model.backbone)
        if norm is not None:
            self.norm = norm
        self.add_module(model.output_name, model.output_layer)
        if model.readout_norm is not None:
            self.readout_norm = model.readout_norm

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.model.logits_from(self.model.run_blocks(self.blocks, h, mask), mask)


def _unique(params: Any) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for p in params:
        seen.setdefault(id(p), p)
    return list(seen.values())


@dataclass
class SplitParts:
    """The head, body and tail of one model, plus the spec and the model they came from."""

    head: Head
    body: Body
    tail: Tail
    spec: SplitSpec
    model: TaskModel

    def client_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of head and tail (each once, even if tied)."""
        params = [*self.head.parameters(), *self.tail.parameters()]
        return _unique(p for p in params if p.requires_grad)

    def client_named_parameters(self) -> dict[str, nn.Parameter]:
        """Trainable head and tail parameters under their names in the full model."""
        ids = {id(p) for p in self.client_parameters()}
        return {n: p for n, p in self.model.named_parameters() if id(p) in ids}

    def unfreeze_tail_blocks(self) -> None:
        """Make the tail's transformer blocks trainable (SFPrompt's tail with t >= 1 trains
        whole; docs/sfprompt.md §1). A no-op for t = 0."""
        for p in self.tail.blocks.parameters():
            p.requires_grad_(True)

    def unfreeze_head_blocks(self) -> None:
        """Make the head's transformer blocks trainable (``split.train_head``: the client fine-tunes
        what it sends, for example under the NoPeek penalty). A no-op for h = 0."""
        for p in self.head.blocks.parameters():
            p.requires_grad_(True)

    def freeze_body(self) -> None:
        """Freeze the body and put it in eval mode (SFPrompt's server part)."""
        self.body.requires_grad_(False)
        self.body.eval()


def split_model(model: TaskModel, spec: SplitSpec) -> SplitParts:
    """Cut ``model`` at ``spec``; the parts share the model's submodules by reference.

    Raises ``ValueError`` when the blocks do not fit, for a CLS readout with no client block
    (its output would not depend on the input; docs/sfprompt.md §1) and for deep prompts.
    """
    n_layers = model.n_layers
    head_r, body_r, tail_r = spec.ranges(n_layers)
    if model.readout == "cls" and spec.head_blocks == 0 and spec.tail_blocks == 0:
        raise ValueError(
            "readout='cls' with head_blocks = tail_blocks = 0 is degenerate: the client sees the "
            "CLS token before any block, the same for every input; use readout='mean' or move "
            "a block to the client (head_blocks >= 1 or tail_blocks >= 1)"
        )
    if model.prompt is not None and model.prompt.deep_layers:
        raise ValueError(
            "deep prompts enter every block, so they cannot be split between client and server; "
            "use shallow prompts (deep_prompts=False) for split training"
        )
    blocks = list(model.blocks)
    return SplitParts(
        head=Head(model, [blocks[i] for i in head_r]),
        body=Body(model, [blocks[i] for i in body_r]),
        tail=Tail(model, [blocks[i] for i in tail_r]),
        spec=spec,
        model=model,
    )
