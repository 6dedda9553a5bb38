"""HFT: half fine-tuning, half of the parameter matrices of every block train per stage.

Hui et al., "HFT: Half Fine-Tuning for Large Language Models", ACL 2025,
https://arxiv.org/abs/2404.18466; see docs/methods.md.

Per stage a seeded draw selects, in every block, 2 of the 4 attention matrices {q, k, v, o};
for a three-matrix FFN {gate, up, down} 1 of 3 in a random half of the layers and 2 of 3 in
the other half; for a two-matrix FFN 1 of 2 (our reading of "other architectures"). A matrix's
bias follows it. Norms and embeddings [D, verify]: 1 of the 2 block norms, a coin flip for the
final norm and for the embeddings. The new classifier always trains.

Stages: the draw happens in ``apply`` (stage 0) and again in :meth:`HFT.new_stage`.
``reselect_every_epochs = k > 0`` (an ablation) re-draws every k epochs through
``on_round_start`` (stage ``(round - 1) // k``, computed from the round, never counted per call); then every candidate stays trainable in ``apply`` so the optimizer holds it,
and the draw is applied by ``requires_grad`` (frozen tensors get no gradient, and torch
optimizers skip tensors without one).

What trains and travels: the selected matrices, their biases, the drawn norms and the
classifier. Split strategies: yes, the selection is local to each block; seed the draw
identically on all clients (the seed is ``method.hft.seed`` plus the stage).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from torch import nn

from fedft.config import MethodConfig
from fedft.errors import check
from fedft.methods.base import BaseMethod, block_linears, freeze_all, new_head, register_method, unfreeze


@dataclass(frozen=True)
class HFTOptions:
    """``[method.hft]``: half fine-tuning, half of the block matrices train per stage."""

    # [paper] 0 = one draw per stage (a stage is a whole run); k > 0 re-draws every k epochs
    # (an ablation)
    reselect_every_epochs: int = 0
    seed: int = 0  # [D]

    def __post_init__(self) -> None:
        check(self.reselect_every_epochs >= 0, "method.hft.reselect_every_epochs", "an integer >= 0")


_NORMS = ("layernorm_before", "layernorm_after", "norm1", "norm2", "input_layernorm",
          "post_attention_layernorm", "attention.output.LayerNorm", "output.LayerNorm")


def draw_selection(model: nn.Module, seed: int) -> list[str]:
    """Module names trainable in this stage (matrices, block norms, final norm, embeddings)."""
    rng = random.Random(seed)
    layers = block_linears(model)
    big_ffn = [i < len(layers) // 2 for i in range(len(layers))]
    rng.shuffle(big_ffn)  # half of the layers train 2 of 3 FFN matrices
    prefix = {id(b): n for n, b in model.named_modules()}
    chosen: list[str] = []
    for i, roles in enumerate(layers):
        attn = [roles[r] for r in ("q", "k", "v", "o") if r in roles]
        ffn = [roles[r] for r in ("gate", "up", "down") if r in roles]
        chosen += rng.sample(attn, len(attn) // 2)
        n_ffn = (2 if big_ffn[i] else 1) if len(ffn) == 3 else len(ffn) // 2
        chosen += rng.sample(ffn, n_ffn)
        block = model.blocks[i]
        norms = [f"{prefix[id(block)]}.{n}" for n, _ in block.named_modules() if n in _NORMS]
        chosen += rng.sample(norms, len(norms) // 2)
    if rng.random() < 0.5 and model.arch.final_norm(model.backbone) is not None:
        chosen.append(prefix[id(model.arch.final_norm(model.backbone))])
    if rng.random() < 0.5:
        chosen.append(prefix[id(model.arch.embedding_module(model.backbone))])
    return chosen


@register_method("hft", HFTOptions)
class HFT(BaseMethod):
    description = "half fine-tuning: a seeded half of each block's matrices trains per stage"

    def __init__(self, cfg: MethodConfig) -> None:
        super().__init__(cfg)
        self.stage = 0
        self.selected: list[str] = []

    def select(self, model: nn.Module, stage: int) -> None:
        """Draw stage ``stage``'s half and set ``requires_grad`` accordingly."""
        self.stage = stage
        self.selected = draw_selection(model, self.options.seed * 1000 + stage)
        freeze_all(model)
        modules = dict(model.named_modules())
        unfreeze([modules[n] for n in self.selected] + [new_head(model)])

    def apply(self, model: nn.Module) -> None:
        if self.options.reselect_every_epochs:
            for p in model.parameters():  # the optimizer must hold every candidate
                p.requires_grad_(True)
            self._pending = True
            model.register_forward_pre_hook(self._lazy_select)
        else:
            self.select(model, 0)

    def _lazy_select(self, model: nn.Module, args: tuple) -> None:
        if self._pending:
            self._pending = False
            self.select(model, self.stage)

    def new_stage(self, model: nn.Module) -> None:
        """Start the next stage (next task or training phase) with a fresh draw."""
        self.select(model, self.stage + 1)

    def describe(self) -> dict:
        return {"stage": self.stage, "selected_modules": len(self.selected)}

    def update_keys(self, model: nn.Module) -> list[str]:
        """With re-selection the trained half changes between stages, so a federated round
        downloads every candidate (and uploads only the half trained this stage)."""
        if self.options.reselect_every_epochs:
            return sorted(n for n, _ in model.named_parameters())
        return super().update_keys(model)

    def on_round_start(self, model: nn.Module, server_round: int) -> None:
        """Stage ``(server_round - 1) // k``: a function of the round, so the server and every
        client of a round (in whatever process) draw the same half."""
        k = self.options.reselect_every_epochs
        if k and (server_round - 1) // k != self.stage:
            self.stage = (server_round - 1) // k
            self._pending = True
