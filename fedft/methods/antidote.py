"""Antidote: after fine-tuning, prune the weights with the highest Wanda scores on harmful data.

Huang et al., "Antidote: Post-fine-tuning Safety Alignment for Large Language Models against
Harmful Fine-tuning", 2024, https://arxiv.org/abs/2408.09600, github git-disl/Antidote; see
docs/methods.md.

Training is LoRA (``method.lora`` options; the paper uses q/k/v) or, with ``base = "full"``,
full fine-tuning. ``finalize`` runs the one-shot realignment: layer by layer (block order), a
calibration forward with hooks on the block's targets (every LoRA A and B linear, or the q/k/v
linears for ``full``) accumulates ``s_j = sqrt(mean_tokens x_j^2)`` per input feature; the score is
``S_ij = |W_ij| s_j``; in each output row the top ``dense_ratio`` fraction of scores is zeroed.
Later layers are calibrated after earlier ones are pruned. No retraining.

Calibration set: :meth:`Antidote.realign` takes any batches (the harmful set D_h). In a
``fedft run`` there is no harmful set, so the proxy is the training samples of class
``harmful_label`` seen in the last epoch (kept by a forward pre-hook, at most 32 samples).

What trains and travels: as LoRA (or full FT). Split strategies: Wanda needs input activations
only, no gradients, so it runs on client-held layers; the defender must hold D_h, so the natural
place in federated runs is the aggregated adapter on the server.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from fedft.errors import check
from fedft.methods.base import (
    BaseMethod,
    block_linears,
    freeze_all,
    new_head,
    parse_roles,
    register_method,
    unfreeze,
)
from fedft.methods.lora import inject_lora

log = logging.getLogger(__name__)
MAX_CALIBRATION = 32


@dataclass(frozen=True)
class AntidoteOptions:
    """``[method.antidote]``: LoRA (or full) fine-tuning, then prune the top-Wanda-scored weights.
    The LoRA settings are ``[method.lora]``'s."""

    base: Literal["lora", "full"] = "lora"  # [paper] LoRA fine-tuning
    dense_ratio: float = 0.1  # r: fraction pruned per output row
    harmful_label: int = 0  # [D] calibration = training samples of this class (a harmful proxy)

    def __post_init__(self) -> None:
        check(0 <= self.dense_ratio < 1, "method.antidote.dense_ratio", "a float in [0, 1)")


@register_method("antidote", AntidoteOptions)
class Antidote(BaseMethod):
    description = "LoRA fine-tuning, then prune the top Wanda-scored adapter weights on a harmful set"
    finalize_keeps_outputs = False

    def apply(self, model: nn.Module) -> None:
        freeze_all(model)
        if self.options.base == "lora":
            o = self.cfg.options_for("lora")
            inject_lora(model, parse_roles(o.targets, "method.lora.targets"), o.rank, o.alpha, o.dropout)
            for n, p in model.named_parameters():
                p.requires_grad_("lora_" in n)
        else:
            model.requires_grad_(True)
        unfreeze([new_head(model)])
        self.calibration: list[dict[str, Any]] = []
        self.epoch = 0
        self.scores: dict[str, torch.Tensor] = {}
        model.register_forward_pre_hook(self._keep_harmful)

    def describe(self) -> dict:
        return {"calibration_samples": int(sum(len(b["labels"]) for b in self.calibration)),
                "pruned_weights": getattr(self, "pruned_weights", 0)}

    def on_round_start(self, model: nn.Module, server_round: int) -> None:
        self.calibration = []  # keep the last epoch's samples only

    def _keep_harmful(self, model: nn.Module, args: tuple) -> None:
        batch = args[0]
        if not model.training or "labels" not in batch or batch["labels"].dim() != 1:
            return
        rows = batch["labels"] == self.options.harmful_label
        have = sum(len(b["labels"]) for b in self.calibration)
        if rows.any() and have < MAX_CALIBRATION:
            self.calibration.append({k: v[rows].detach() for k, v in batch.items()})

    def targets(self, model: nn.Module) -> list[list[tuple[str, nn.Linear]]]:
        """Per block, the (name, linear) pairs that Antidote prunes."""
        modules = dict(model.named_modules())
        out = []
        for roles in block_linears(model):
            names = [roles[r] for r in ("q", "k", "v") if r in roles]
            if self.options.base == "lora":
                names = [f"{n}.lora_{ab}.default" for n in names for ab in "AB" if f"{n}.lora_{ab}.default" in modules]
            out.append([(n, modules[n]) for n in names])
        return out

    @torch.no_grad()
    def input_norms(self, model: nn.Module, layer: list[tuple[str, nn.Linear]],
                    batches: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """``s_j = sqrt(mean over calibration tokens of x_j^2)`` for each target's input."""
        sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros(()))
        counts: dict[str, int] = defaultdict(int)

        def hook(name: str):  # noqa: ANN202
            def fn(m: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
                x = inputs[0].reshape(-1, inputs[0].shape[-1]).float()  # (tokens, in)
                sums[name] = sums[name] + x.pow(2).sum(0)
                counts[name] += x.shape[0]
            return fn

        handles = [m.register_forward_hook(hook(n)) for n, m in layer]
        for b in batches:
            model(b)
        for h in handles:
            h.remove()
        return {n: (sums[n] / max(counts[n], 1)).sqrt() for n, _ in layer}

    @torch.no_grad()
    def realign(self, model: nn.Module, batches: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Prune the top ``dense_ratio`` Wanda scores per row; returns the pruned masks."""
        was = model.training
        model.eval()
        masks = {}
        for layer in self.targets(model):
            norms = self.input_norms(model, layer, batches)
            for name, lin in layer:
                score = lin.weight.abs() * norms[name][None, :]  # (out, in)
                k = int(self.options.dense_ratio * score.shape[1])
                mask = torch.zeros_like(score, dtype=torch.bool)
                if k:
                    mask.scatter_(1, torch.topk(score, k, dim=1).indices, True)
                lin.weight.masked_fill_(mask, 0.0)
                self.scores[name], masks[name] = score, mask
        self.pruned_weights = int(sum(int(m.sum()) for m in masks.values()))
        model.train(was)
        return masks

    def finalize(self, model: nn.Module) -> None:
        if self.calibration:
            self.realign(model, self.calibration)
        else:  # e.g. a federated server: the calibration batches stay on the clients
            log.warning("antidote: no calibration batches of class %d were seen here; nothing pruned",
                        self.options.harmful_label)
