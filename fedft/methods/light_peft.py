"""Light-PEFT: early pruning of the foundation model (heads, FFN channels) and of LoRA.

Gu et al., "Light-PEFT: Lightening Parameter-Efficient Fine-Tuning via Early Pruning",
Findings of ACL 2024, https://arxiv.org/abs/2406.03792, github gccnlp/Light-PEFT; see
docs/methods.md.

Estimation (the first ``estimation_epochs`` epochs): LoRA (peft) on ``targets`` plus trainable
masks ``lpeft_head_mask`` (H,) scaling each head's output (on the O projection's input) and
``lpeft_ffn_mask`` (C,) scaling the FFN activations (on the down projection's input), both
initialised to 1 with an L1 penalty ``l1 * sum |m|`` (added as its gradient ``l1 * sign(m)`` by a
tensor hook, since the loss belongs to the task model). Hooks record, per step, the LoRA module
importance ``mean_tokens ||dW x|| / ||W x||`` and the rank importance ``|mean_j (A * dA)[i, j]| +
|mean_j (B * dB)[j, i]|``; scores are averaged over the second half of the steps.
Pruning (:meth:`LightPEFT.prune`, at the next ``on_round_start``, or in ``finalize``): per layer
the ``rho_attn`` lowest heads, globally the ``rho_ffn`` lowest FFN channels, the ``rho_module``
lowest LoRA modules and then the ``rho_rank`` lowest ranks of the survivors (``selection =
"random"``: the same counts from seeded random scores, the paper's control). Pruning is masked
while training continues (the optimizer keeps its tensors; a forward pre-hook re-zeroes pruned
LoRA ranks); ``finalize`` then removes pruned FFN channels and LoRA ranks physically
(:func:`compact`, outputs unchanged). Pruned heads stay masked (per-layer head counts would differ).

What trains and travels: LoRA A/B of surviving modules, the masks during estimation, the
classifier, and the module and rank scores (buffers ``lpeft_module_score`` / ``lpeft_rank_score``):
federated, each client sends its round's scores, the server FedAvgs them, and at round
``estimation_epochs + 1`` the server and every client prune from the same received scores and
masks, so all of them remove the same heads, channels, modules and ranks. Split strategies: partial; pruning client blocks is local and keeps the cut width,
but the estimation phase needs end-to-end gradients (through the cut) and pruning the server's
body needs the server.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers.pytorch_utils import prune_linear_layer

from fedft.errors import check
from fedft.methods.base import (
    BaseMethod,
    block_linears,
    freeze_all,
    head_geometry,
    new_head,
    parse_roles,
    register_method,
    unfreeze,
)
from fedft.methods.lora import inject_lora


@dataclass(frozen=True)
class LightPEFTOptions:
    """``[method.light_peft]``: estimation epochs with masks + LoRA, then structured early pruning."""

    estimation_epochs: int = 1
    l1: float = 1e-4
    rho_attn: float = 1 / 3
    rho_ffn: float = 1 / 3
    rho_module: float = 0.75
    rho_rank: float = 0.5
    rank: int = 8
    alpha: float = 16.0
    targets: str = "q,k,v,o"
    selection: str = "mask"  # [paper] "mask"; "random" is the paper's control (same counts, seeded)
    seed: int = 0  # [D]

    def __post_init__(self) -> None:
        check(self.estimation_epochs >= 0, "method.light_peft.estimation_epochs", "an integer >= 0")
        check(self.selection in ("mask", "random"), "method.light_peft.selection", '"mask" or "random"')
        for k in ("rho_attn", "rho_ffn", "rho_module", "rho_rank"):
            check(0 <= getattr(self, k) < 1, f"method.light_peft.{k}", "a float in [0, 1)")
        check(self.rank >= 1, "method.light_peft.rank", "an integer >= 1")
        parse_roles(self.targets, "method.light_peft.targets")


def _scale_heads(m: nn.Module, args: tuple) -> tuple:
    x = args[0]  # (B, T, H * dh)
    mask = m.lpeft_head_mask.repeat_interleave(x.shape[-1] // m.lpeft_head_mask.numel())
    return (x * mask,)


def _scale_ffn(m: nn.Module, args: tuple) -> tuple:
    return (args[0] * m.lpeft_ffn_mask,)  # (B, T, C)


def _second_half_mean(steps: list[torch.Tensor]) -> torch.Tensor:
    s = torch.stack(steps[len(steps) // 2:]) if steps else torch.zeros(1)
    return torch.nan_to_num(s.mean(0), nan=0.0, posinf=0.0, neginf=0.0)


@torch.no_grad()
def compact(model: nn.Module) -> None:
    """Physically remove pruned FFN channels (plain linears) and pruned LoRA ranks."""
    modules = dict(model.named_modules())
    for roles in block_linears(model):
        down = modules[roles["down"]]
        ups = [roles[r] for r in ("gate", "up") if r in roles]
        if not hasattr(down, "lpeft_ffn_mask") or not all(type(modules[n]) is nn.Linear for n in ups + [roles["down"]]):
            continue
        keep = down.lpeft_ffn_mask.nonzero().view(-1)
        for n in ups:
            model.set_submodule(n, prune_linear_layer(modules[n], keep, dim=0))
        model.set_submodule(roles["down"], prune_linear_layer(down, keep, dim=1))
    for m in model.modules():
        if isinstance(m, LoraLayer) and hasattr(m, "lpeft_rank_mask"):
            keep = m.lpeft_rank_mask.nonzero().view(-1)
            a, b = m.lora_A["default"], m.lora_B["default"]
            m.lora_A["default"] = prune_linear_layer(a, keep, dim=0)  # (r', in)
            m.lora_B["default"] = prune_linear_layer(b, keep, dim=1)  # (out, r')
            m.r["default"] = len(keep)  # scaling (alpha / r) keeps its original value
            del m.lpeft_rank_mask


@register_method("light_peft", LightPEFTOptions)
class LightPEFT(BaseMethod):
    description = "Light-PEFT: LoRA with masked early pruning of heads, FFN channels, LoRA modules and ranks"
    finalize_keeps_outputs = False

    def apply(self, model: nn.Module) -> None:
        o = self.options
        freeze_all(model)
        inject_lora(model, parse_roles(o.targets, "method.light_peft.targets"), o.rank, o.alpha)
        heads, _, _ = head_geometry(model)
        modules = dict(model.named_modules())
        for roles in block_linears(model):
            om, dm = modules[roles["o"]], modules[roles["down"]]
            om.lpeft_head_mask = nn.Parameter(torch.ones(heads))
            dm.lpeft_ffn_mask = nn.Parameter(torch.ones(dm.in_features if type(dm) is nn.Linear
                                                         else dm.base_layer.in_features))
            om.register_forward_pre_hook(_scale_heads)
            dm.register_forward_pre_hook(_scale_ffn)
            for p in (om.lpeft_head_mask, dm.lpeft_ffn_mask):
                p.register_hook(lambda g, p=p: g + o.l1 * p.detach().sign())
        for n, p in model.named_parameters():
            p.requires_grad_("lora_" in n or "lpeft_" in n)
        unfreeze([new_head(model)])
        self.pruned = False
        self.module_imp: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.rank_imp: dict[str, list[torch.Tensor]] = defaultdict(list)
        self._base_norm: dict[str, torch.Tensor] = {}
        self.lora = {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}
        for name, m in self.lora.items():
            self._hook_importance(name, m)
            # the scores as travelling buffers, so a federated server prunes from their FedAvg
            m.register_buffer("lpeft_module_score", torch.zeros(1))
            m.register_buffer("lpeft_rank_score", torch.zeros(m.r["default"]))
        model.register_forward_pre_hook(lambda m, args: self._apply_rank_masks())

    def _hook_importance(self, name: str, m: LoraLayer) -> None:
        def base_out(mod: nn.Module, i: tuple, out: torch.Tensor) -> None:
            if mod.training and not self.pruned:
                self._base_norm[name] = out.detach().norm(dim=-1)  # (B, T)

        def lora_out(mod: nn.Module, i: tuple, out: torch.Tensor) -> None:
            if mod.training and not self.pruned and name in self._base_norm:
                delta = out.detach().norm(dim=-1) * m.scaling["default"]
                self.module_imp[name].append((delta / self._base_norm.pop(name).clamp(min=1e-12)).mean())

        def rank_grad(p: torch.Tensor, dim: int, part: list) -> None:
            if p.grad is not None and not self.pruned:
                part.append((p.detach() * p.grad).mean(dim).abs())

        m.base_layer.register_forward_hook(base_out)
        m.lora_B["default"].register_forward_hook(lora_out)
        parts: dict[str, list] = {"A": [], "B": []}
        self._rank_parts = getattr(self, "_rank_parts", {})
        self._rank_parts[name] = parts
        m.lora_A["default"].weight.register_post_accumulate_grad_hook(lambda p: rank_grad(p, 1, parts["A"]))
        m.lora_B["default"].weight.register_post_accumulate_grad_hook(lambda p: rank_grad(p, 0, parts["B"]))

    def on_round_start(self, model: nn.Module, server_round: int) -> None:
        if not self.pruned and server_round == self.options.estimation_epochs + 1:
            self.prune(model)

    def _local_scores(self) -> bool:
        return any(len(v) for v in self.module_imp.values())

    def scores(self) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """(module importance, rank importance) averaged over the second half of the steps; with
        no steps recorded here (a federated server, or a client that just received the global
        state) the received, FedAvg-ed score buffers."""
        if not self._local_scores():
            return ({n: float(m.lpeft_module_score) for n, m in self.lora.items()},
                    {n: m.lpeft_rank_score.clone() for n, m in self.lora.items()})
        mods = {n: float(_second_half_mean(v)) for n, v in self.module_imp.items()}
        ranks = {}
        for n, parts in self._rank_parts.items():
            steps = [a + b for a, b in zip(parts["A"], parts["B"], strict=False)]
            ranks[n] = _second_half_mean(steps) if steps else torch.zeros(self.lora[n].r["default"])
        return mods, ranks

    @torch.no_grad()
    def prune(self, model: nn.Module) -> dict[str, Any]:
        """Prune heads, FFN channels, LoRA modules and ranks (masked); returns the counts. With
        ``selection = "random"`` every score is replaced by a seeded uniform draw first: the
        control of the paper's ablation (the same counts, no estimate)."""
        o = self.options
        modules = dict(model.named_modules())
        layers = block_linears(model)
        if o.selection == "random":
            self._randomise_scores(model, layers)
        n_heads = 0
        for roles in layers:
            mask = modules[roles["o"]].lpeft_head_mask
            drop = torch.argsort(mask.abs())[: int(o.rho_attn * mask.numel())]
            mask.fill_(1).index_fill_(0, drop, 0).requires_grad_(False)
            n_heads += len(drop)
        ffn = [modules[r["down"]].lpeft_ffn_mask for r in layers]
        flat = torch.cat([m.abs() for m in ffn])
        cut = torch.sort(flat).values[int(o.rho_ffn * flat.numel())] if o.rho_ffn else -1.0
        n_ffn = 0
        for m in ffn:
            keep = m.abs() >= cut
            keep[m.abs().argmax()] = True  # every layer keeps a channel
            m.copy_(keep.float()).requires_grad_(False)
            n_ffn += int((~keep).sum())
        mods, ranks = self.scores()
        order = sorted(self.lora, key=lambda n: mods.get(n, 0.0))
        dropped = order[: int(o.rho_module * len(order))]
        for n in dropped:
            for p in (self.lora[n].lora_A["default"].weight, self.lora[n].lora_B["default"].weight):
                p.zero_().requires_grad_(False)
        survivors = [n for n in self.lora if n not in dropped]
        allr = np.concatenate([ranks[n].cpu().numpy() for n in survivors]) if survivors else np.zeros(0)
        rcut = np.sort(allr)[int(o.rho_rank * len(allr))] if len(allr) and o.rho_rank else -np.inf
        for n in survivors:
            keep = ranks[n] >= rcut
            keep[ranks[n].argmax()] = True
            self.lora[n].register_buffer("lpeft_rank_mask", keep.float(), persistent=False)
        self.pruned = True
        self._apply_rank_masks()
        self.summary = {"heads": n_heads, "ffn_channels": n_ffn, "lora_modules": len(dropped),
                        "lora_ranks": int(sum((self.lora[n].lpeft_rank_mask == 0).sum() for n in survivors))}
        return self.summary

    @torch.no_grad()
    def _randomise_scores(self, model: nn.Module, layers: list[dict[str, str]]) -> None:
        g = torch.Generator().manual_seed(self.options.seed)
        modules = dict(model.named_modules())
        for roles in layers:
            for m in (modules[roles["o"]].lpeft_head_mask, modules[roles["down"]].lpeft_ffn_mask):
                m.copy_(torch.rand(m.shape, generator=g))
        for v in self.module_imp.values():
            v.clear()
        for parts in getattr(self, "_rank_parts", {}).values():
            parts["A"].clear()
            parts["B"].clear()
        for m in self.lora.values():  # scores() falls back to these buffers
            m.lpeft_module_score.copy_(torch.rand(1, generator=g))
            m.lpeft_rank_score.copy_(torch.rand(m.lpeft_rank_score.shape, generator=g))

    @torch.no_grad()
    def _apply_rank_masks(self) -> None:
        for m in self.lora.values():
            if hasattr(m, "lpeft_rank_mask"):
                m.lora_A["default"].weight.mul_(m.lpeft_rank_mask[:, None])
                m.lora_B["default"].weight.mul_(m.lpeft_rank_mask[None, :])

    def describe(self) -> dict:
        return dict(getattr(self, "summary", {}), pruned=self.pruned)

    def _score_buffers(self) -> dict[str, np.ndarray]:
        out = {}
        for n, m in self.lora.items():
            out[f"{n}.lpeft_module_score"] = m.lpeft_module_score.detach().cpu().numpy().copy()
            out[f"{n}.lpeft_rank_score"] = m.lpeft_rank_score.detach().cpu().numpy().copy()
        return out

    def download(self, model: nn.Module) -> dict[str, np.ndarray]:
        return {**super().download(model), **self._score_buffers()}

    @torch.no_grad()
    def encode_update(self, model: nn.Module) -> dict[str, np.ndarray]:
        """The trained tensors and, before pruning, this round's importance scores."""
        if not self.pruned and self._local_scores():
            mods, ranks = self.scores()
            for n, m in self.lora.items():
                m.lpeft_module_score.fill_(mods.get(n, 0.0))
                if n in ranks and ranks[n].numel() == m.lpeft_rank_score.numel():
                    m.lpeft_rank_score.copy_(ranks[n])
        return {**super().encode_update(model), **self._score_buffers()}

    def decode_update(self, model: nn.Module, update: dict[str, np.ndarray]) -> None:
        """Load the global state; the received scores replace this process's own records."""
        super().decode_update(model, update)
        for v in self.module_imp.values():
            v.clear()
        for parts in getattr(self, "_rank_parts", {}).values():
            parts["A"].clear()
            parts["B"].clear()

    def finalize(self, model: nn.Module) -> None:
        if not self.pruned:
            self.prune(model)
        compact(model)
