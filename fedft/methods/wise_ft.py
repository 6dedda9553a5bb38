"""WiSE-FT weight interpolation, a layer-wise straggler report, and straggler sparsification.

Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022,
https://arxiv.org/abs/2109.01903; Abdollahpoorrostam, "In Search of the Successful
Interpolation: On the Role of Sharpness in CLIP Generalization", 2024,
https://arxiv.org/abs/2410.16476; see docs/methods.md.

Training is full fine-tuning. ``finalize`` sets ``theta(alpha) = (1 - alpha) theta_zs + alpha
theta_ft`` (alpha = 1 is the fine-tuned model) on the backbone; the new classifier has no
zero-shot counterpart and stays fine-tuned unless ``interpolate_head``. Before that, with
``report`` on, it computes on a few training batches (kept by a forward pre-hook) the loss
barrier of the whole path and of each layer (embeddings, each block, final norm) interpolated
alone with the rest at theta_ft [verify], ``B = max_alpha [L(alpha) - ((1 - alpha) L(0) + alpha
L(1))]``; the top-``stragglers`` layers are the stragglers. Optionally the layer-wise adaptive
sharpness ``max_{|delta| <= rho |theta|} L(theta + delta) - L(theta)`` (3 PGD steps), and
sparsification of the stragglers: zero a fraction ``sparsity`` of their fine-tuning delta (or
fine-tuned weights) by magnitude or at random. The result is in ``WiseFT.report``.

What trains and travels: everything, as full fine-tuning. Split strategies: interpolation and
sparsification are local to each party's parts; the report needs end-to-end losses (extra
split rounds).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from fedft.errors import check
from fedft.methods.base import BaseMethod, register_method

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WiseFTOptions:
    """``[method.wise_ft]``: theta(alpha) = (1 - alpha) theta_zs + alpha theta_ft; straggler report."""

    alpha: float = 0.5
    interpolate_head: bool = False  # [D] the new classifier has no zero-shot counterpart
    report: bool = True
    report_alphas: int = 5
    report_batches: int = 2
    sharpness_rho: float = 0.0  # > 0: also layer-wise adaptive sharpness (PGD)
    stragglers: int = 2  # k top-barrier layers
    sparsity: float = 0.0  # s: fraction of straggler entries zeroed (0 = off)
    sparsify_target: Literal["delta", "weights_ft"] = "delta"
    sparsify_criterion: Literal["magnitude", "random"] = "magnitude"

    def __post_init__(self) -> None:
        check(0 <= self.alpha <= 1, "method.wise_ft.alpha", "a float in [0, 1]")
        check(self.report_alphas >= 2, "method.wise_ft.report_alphas", "an integer >= 2")
        check(0 <= self.sparsity < 1, "method.wise_ft.sparsity", "a float in [0, 1)")
        check(self.stragglers >= 0, "method.wise_ft.stragglers", "an integer >= 0")


def layer_groups(model: nn.Module) -> dict[str, list[str]]:
    """Layer name -> parameter names: ``embeddings``, ``block.<i>``, ``final`` (final norm)."""
    prefix = {id(b): n for n, b in model.named_modules()}
    blocks = [prefix[id(b)] + "." for b in model.blocks]
    groups: dict[str, list[str]] = {}
    for n, _ in model.named_parameters():
        if not n.startswith("backbone.") or ".pooler" in n:
            continue
        hit = [i for i, b in enumerate(blocks) if n.startswith(b)]
        key = f"block.{hit[0]}" if hit else ("embeddings" if ".embed" in n else "final")
        groups.setdefault(key, []).append(n)
    return groups


@torch.no_grad()
def interpolate(model: nn.Module, zs: dict[str, torch.Tensor], ft: dict[str, torch.Tensor],
                alpha: float, names: list[str] | None = None) -> None:
    """Set ``names`` (default: all of ``zs``) to ``(1 - alpha) zs + alpha ft``."""
    state = dict(model.named_parameters())
    for n in names if names is not None else list(zs):
        state[n].copy_(torch.lerp(zs[n], ft[n], alpha))


@torch.no_grad()
def mean_loss(model: nn.Module, batches: list[dict[str, Any]]) -> float:
    return float(np.mean([float(model.loss(model(b), b)) for b in batches]))


def barrier(loss_at: Callable[[float], float], alphas: np.ndarray) -> float:
    """``max_alpha L(alpha) - ((1 - alpha) L(0) + alpha L(1))`` over the grid."""
    losses = np.array([loss_at(float(a)) for a in alphas])
    return float(np.max(losses - ((1 - alphas) * losses[0] + alphas * losses[-1])))


def sharpness(model: nn.Module, batches: list[dict[str, Any]], names: list[str], rho: float,
              steps: int = 3) -> float:
    """Adaptive worst-case sharpness restricted to ``names``: projected sign-gradient ascent."""
    state = dict(model.named_parameters())
    ps = [state[n] for n in names]
    base = [p.detach().clone() for p in ps]
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    for p in ps:
        p.requires_grad_(True)
    l0 = mean_loss(model, batches)
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            sum(model.loss(model(b), b) for b in batches).backward()
        with torch.no_grad():
            for p, b0 in zip(ps, base, strict=True):
                bound = rho * b0.abs()
                step = p + bound * 0.5 * (p.grad.sign() if p.grad is not None else 0)
                p.copy_(b0 + torch.maximum(torch.minimum(step - b0, bound), -bound))
    worst = mean_loss(model, batches)
    with torch.no_grad():
        for p, b0 in zip(ps, base, strict=True):
            p.copy_(b0)
    for p, f in zip(model.parameters(), flags, strict=True):
        p.requires_grad_(f)
    model.zero_grad(set_to_none=True)
    return worst - l0


@register_method("wise_ft", WiseFTOptions)
class WiseFT(BaseMethod):
    description = "full FT, then WiSE-FT weight interpolation with alpha; straggler-layer report and sparsity"
    finalize_keeps_outputs = False

    def apply(self, model: nn.Module) -> None:
        model.requires_grad_(True)
        o = self.options
        keep = lambda n: n.startswith("backbone.") or o.interpolate_head  # noqa: E731
        self.zs = {n: p.detach().clone() for n, p in model.named_parameters() if keep(n)}
        self.batches: list[dict[str, Any]] = []
        self.report: dict[str, Any] = {}
        model.register_forward_pre_hook(self._keep_batch)

    def _keep_batch(self, model: nn.Module, args: tuple) -> None:
        if model.training and self.options.report:
            self.batches = (self.batches + [{k: v.detach() for k, v in args[0].items()}])[
                -self.options.report_batches:]

    def describe(self) -> dict:
        import json

        def plain(o: Any) -> Any:  # tensors and arrays to numbers and lists
            return o.tolist() if hasattr(o, "tolist") else str(o)

        return json.loads(json.dumps(self.report, default=plain))

    def straggler_report(self, model: nn.Module, ft: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Whole-path and per-layer barriers (and sharpness) of the current model's path."""
        o, was = self.options, model.training
        model.eval()
        alphas = np.linspace(0, 1, o.report_alphas)
        groups = layer_groups(model)

        def path(names: list[str] | None) -> Callable[[float], float]:
            def loss_at(a: float) -> float:
                interpolate(model, self.zs, ft, a, names)
                return mean_loss(model, self.batches)
            return loss_at

        rep: dict[str, Any] = {"barrier": barrier(path(None), alphas), "layers": {}}
        interpolate(model, self.zs, ft, 1.0)
        for layer, names in groups.items():
            rep["layers"][layer] = {"barrier": barrier(path([n for n in names if n in self.zs]), alphas)}
            interpolate(model, self.zs, ft, 1.0)
            if o.sharpness_rho > 0:
                rep["layers"][layer]["sharpness"] = sharpness(model, self.batches, names, o.sharpness_rho)
        order = sorted(rep["layers"], key=lambda k: -rep["layers"][k]["barrier"])
        rep["stragglers"] = order[: o.stragglers]
        model.train(was)
        return rep

    @torch.no_grad()
    def sparsify(self, model: nn.Module, layers: list[str], ft: dict[str, torch.Tensor]) -> None:
        """Zero a fraction ``sparsity`` of the delta (or weights) of ``layers`` in ``ft``."""
        o, g = self.options, torch.Generator().manual_seed(0)
        groups = layer_groups(model)
        for n in [n for layer in layers for n in groups[layer] if n in self.zs]:
            target = ft[n] - self.zs[n] if o.sparsify_target == "delta" else ft[n].clone()
            score = target.abs() if o.sparsify_criterion == "magnitude" else torch.rand(target.shape, generator=g)
            k = int(o.sparsity * target.numel())
            if k:
                # magnitude: zero the smallest entries (pruning); random: any k entries
                idx = torch.topk(score.view(-1), k, largest=False).indices
                target.view(-1)[idx] = 0
            ft[n] = self.zs[n] + target if o.sparsify_target == "delta" else target

    def finalize(self, model: nn.Module) -> None:
        o = self.options
        ft = {n: p.detach().clone() for n, p in model.named_parameters() if n in self.zs}
        if o.report and self.batches:
            self.report = self.straggler_report(model, ft)
            log.info("WiSE-FT straggler report: %s", self.report)
            if o.sparsity > 0:
                self.sparsify(model, self.report["stragglers"], ft)
        interpolate(model, self.zs, ft, o.alpha)
