"""LT-SFT: lottery-ticket sparse fine-tuning, a K-sparse diff over the pre-trained weights.

Ansell et al., "Composable Sparse Fine-Tuning for Cross-Lingual Transfer", ACL 2022,
https://arxiv.org/abs/2110.07560, github cambridgeltl/composable-sft; see docs/methods.md.

Phase 1 (the first ``phase1_epochs`` epochs): every maskable tensor (backbone weights, norms
excluded by default as in the released scripts; not the unused pooler) and the head train.
At the next ``on_round_start`` (:meth:`LTSFT.start_phase2`) the K entries with the largest
``|theta - theta_0|`` (one global threshold, ``torch.topk``, so exactly K) form the mask mu,
everything rewinds to the start (head included), and phase 2 trains with ``g <- g * mu``
(tensor hooks). A forward pre-hook projects ``theta <- theta_0 + (theta - theta_0) * mu`` before
every forward, so optimizer moments from phase 1 or weight decay cannot move off-mask entries.
One iteration (I = 1); the optimizer's moments carry over from phase 1 (the reference code
starts a new trainer).

:meth:`LTSFT.diff` exports phi as ``{name: (flat indices, values)}`` with exactly K entries;
:func:`apply_diff` adds a diff in place, so ``theta_0 + phi_a + phi_b`` composes by addition.

What travels: in phase 1 the dense tensors (default); in phase 2 ``<name>::idx`` (int64 flat
indices) and ``<name>::val`` (fp32 diff values) per maskable tensor, plus the dense head, both
ways, so a ledger that measures the encoded arrays counts exactly these bytes. Federated: the
server runs the same ``on_round_start``, so after phase 1 it selects the mask from the global
(FedAvg-ed) phase-1 model and rewinds; its sparse download carries the mask to every client,
which is why all clients share one mask and a masked FedAvg of their diffs stays K-sparse.
Split strategies: phi is defined over whatever a client holds (its head and tail tensors).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedft.errors import check
from fedft.methods.base import BaseMethod, freeze_all, new_head, register_method, unfreeze

SparseDiff = dict[str, tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class LTSFTOptions:
    """``[method.lt_sft]``: phase 1 dense for ``phase1_epochs``, then K-sparse phase 2."""

    k: int = 0  # number of diff entries; 0 = use density
    density: float = 0.01
    phase1_epochs: int = 1
    include_norms: bool = False  # [paper] norms excluded, as in the released scripts

    def __post_init__(self) -> None:
        check(self.k >= 0, "method.lt_sft.k", "an integer >= 0")
        check(0 < self.density <= 1, "method.lt_sft.density", "a float in (0, 1]")
        check(self.phase1_epochs >= 0, "method.lt_sft.phase1_epochs", "an integer >= 0")


def maskable(model: nn.Module, norms: bool = False) -> dict[str, nn.Parameter]:
    """Backbone parameters that may enter the diff (no head, no pooler; norms optional)."""
    norm_ids = {id(p) for m in model.modules() if isinstance(m, nn.LayerNorm) or "Norm" in type(m).__name__
                for p in m.parameters(recurse=False)}
    return {n: p for n, p in model.named_parameters()
            if n.startswith("backbone.") and ".pooler" not in n and (norms or id(p) not in norm_ids)}


@torch.no_grad()
def apply_diff(model: nn.Module, diff: SparseDiff, scale: float = 1.0) -> None:
    """``theta += scale * phi`` in place (``scale=-1`` reverts)."""
    state = dict(model.named_parameters())
    for name, (idx, val) in diff.items():
        flat = state[name].view(-1)
        flat.index_add_(0, torch.from_numpy(idx), torch.from_numpy(val).to(flat.dtype) * scale)


@register_method("lt_sft", LTSFTOptions)
class LTSFT(BaseMethod):
    description = "lottery-ticket sparse FT: dense phase, keep the K most-moved weights, rewind, sparse phase"

    def apply(self, model: nn.Module) -> None:
        freeze_all(model)
        self.params = maskable(model, self.options.include_norms)
        for p in self.params.values():
            p.requires_grad_(True)
        unfreeze([new_head(model)])
        self.theta0 = {n: p.detach().cpu().clone() for n, p in self.params.items()}
        self.head0 = {n: p.detach().clone() for n, p in model.output_layer.named_parameters()}
        self.mask: dict[str, torch.Tensor] | None = None

    def describe(self) -> dict:
        return {"k": self.budget(), "maskable": int(sum(p.numel() for p in self.params.values())),
                "phase": 1 if self.mask is None else 2}

    def budget(self) -> int:
        o = self.options
        total = sum(p.numel() for p in self.params.values())
        return min(total, o.k or max(1, round(o.density * total)))

    def on_round_start(self, model: nn.Module, server_round: int) -> None:
        if self.mask is None and server_round == self.options.phase1_epochs + 1:
            self.start_phase2(model)

    @torch.no_grad()
    def start_phase2(self, model: nn.Module) -> None:
        """Select the K most-moved entries, rewind to theta_0, mask gradients from now on."""
        names = list(self.params)
        moved = torch.cat([(self.params[n].detach().cpu() - self.theta0[n]).abs().view(-1) for n in names])
        top = torch.topk(moved, self.budget()).indices
        flat = torch.zeros(moved.numel(), dtype=torch.bool)
        flat[top] = True
        mask, start = {}, 0
        for n in names:
            p = self.params[n]
            mask[n] = flat[start:start + p.numel()].view_as(p).to(p.device)
            start += p.numel()
            p.copy_(self.theta0[n])
        for n, p in model.output_layer.named_parameters():
            p.copy_(self.head0[n])
        self._install(model, mask)

    def _install(self, model: nn.Module, mask: dict[str, torch.Tensor]) -> None:
        """Use ``mask`` from now on: gradients masked, off-mask entries projected back."""
        if self.mask is not None:  # the hooks hold these tensors: update them in place
            for n, mk in mask.items():
                self.mask[n].copy_(mk)
            return
        self.mask = mask
        for n, mk in mask.items():
            self.params[n].register_hook(lambda g, mk=mk: g * mk)
        model.register_forward_pre_hook(lambda m, args: self.project())

    @torch.no_grad()
    def project(self) -> None:
        """Reset off-mask entries to theta_0 (phase 2)."""
        for n, mk in (self.mask or {}).items():
            p = self.params[n]
            p.copy_(torch.where(mk, p, self.theta0[n].to(p.device)))

    @torch.no_grad()
    def diff(self, model: nn.Module) -> SparseDiff:
        """phi = (theta - theta_0) on the mask: exactly K (flat index, value) pairs in all."""
        if self.mask is None:
            raise RuntimeError("the diff exists after phase 1 (start_phase2)")
        out = {}
        for n, mk in self.mask.items():
            idx = mk.view(-1).nonzero().view(-1).cpu()
            d = self.params[n].detach().cpu().view(-1)[idx] - self.theta0[n].view(-1)[idx]
            out[n] = (idx.numpy().astype(np.int64), d.numpy().astype(np.float32))
        return out

    def finalize(self, model: nn.Module) -> None:
        self.project()

    def encode_update(self, model: nn.Module) -> dict[str, np.ndarray]:
        if self.mask is None:
            return super().encode_update(model)
        out: dict[str, np.ndarray] = {}
        for n, (idx, val) in self.diff(model).items():
            out[f"{n}::idx"], out[f"{n}::val"] = idx, val
        for n, p in model.named_parameters():
            if p.requires_grad and n not in self.mask:
                out[n] = p.detach().cpu().numpy().copy()
        return out

    def download(self, model: nn.Module) -> dict[str, np.ndarray]:
        """Phase 1: the dense tensors; phase 2: the mask's indices and diff values, and the head."""
        return self.encode_update(model)

    @torch.no_grad()
    def decode_update(self, model: nn.Module, update: dict[str, np.ndarray]) -> None:
        """Load dense tensors and theta_0 + phi for sparse pairs; a sparse update also carries the
        mask (its indices), so a receiver that has not seen phase 1 starts phase 2 with it."""
        dense = {k: v for k, v in update.items() if "::" not in k}
        super().decode_update(model, dense)
        sparse = {k[:-5]: np.asarray(v) for k, v in update.items() if k.endswith("::idx")}
        if not sparse:
            return
        mask = {}
        for n, p in self.params.items():
            mk = torch.zeros(p.numel(), dtype=torch.bool)
            if n in sparse:
                mk[torch.from_numpy(sparse[n])] = True
            mask[n] = mk.view_as(p).to(p.device)
        self._install(model, mask)
        state = dict(model.named_parameters())
        for n, idx in sparse.items():
            state[n].copy_(self.theta0[n])
            apply_diff(model, {n: (idx, np.asarray(update[f"{n}::val"]))})
