"""S2FT: structured sparse fine-tuning of selected heads and FFN channels, computed densely.

Yang et al., "S²FT: Efficient, Scalable and Generalizable LLM Fine-tuning by Structured
Sparsity", NeurIPS 2024, https://arxiv.org/abs/2412.06289, github Infini-AI-Lab/S2FT; see
docs/methods.md.

Selection [code]: uniform random global indices, seeded: ``rho_o`` of all L*H heads get
trainable O-projection columns, ``rho_v`` of all L*KV key/value heads trainable V rows,
``rho_d`` / ``rho_u`` of all L*C FFN channels trainable down columns / up rows. Each selected
linear gets a zero-initialised dense delta on its slice and a forward hook:
rows ``out[..., idx] += x S^T`` with ``s2ft_rows`` (k, in); columns ``out += x[..., idx] S^T``
with ``s2ft_cols`` (out, k). Autograd then stores only ``x[..., idx]`` for a column delta (the
partial back-propagation of the paper). Instead of co-permuting the weights so the slice is
contiguous, we index it (``index_add`` / gather): same function and update space, no
permutation to undo. ``finalize`` fuses the deltas into the weights; :func:`export_adapter`
gives (indices, delta) per linear, and adapters compose by addition (:func:`load_adapter`).

What trains and travels: ``*.s2ft_rows`` / ``*.s2ft_cols`` (dense sub-matrices; the indices
are seeded, identical everywhere, and do not travel) and the classifier. Split strategies:
yes for client-held blocks; not for an embedding-only head or classifier-only tail
(``SplitSpec(0, 0)``), where only the classifier trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fedft.errors import check
from fedft.methods.base import (
    BaseMethod,
    block_linears,
    freeze_all,
    head_geometry,
    new_head,
    register_method,
    unfreeze,
)

_HOOK = "_s2ft_hook_handle"


@dataclass(frozen=True)
class S2FTOptions:
    """``[method.s2ft]``: budgets as fractions of all heads (v rows, o columns) and FFN channels
    (up rows, down columns)."""

    rho_v: float = 0.0
    rho_o: float = 0.1
    rho_u: float = 0.0
    rho_d: float = 0.05
    seed: int = 0  # [D]

    def __post_init__(self) -> None:
        for k in ("rho_v", "rho_o", "rho_u", "rho_d"):
            check(0 <= getattr(self, k) <= 1, f"method.s2ft.{k}", "a float in [0, 1]")


def _s2ft_hook(m: nn.Module, inputs: Any, out: torch.Tensor) -> torch.Tensor:
    x = inputs[0]  # (..., in)
    if hasattr(m, "s2ft_rows"):
        out = out.index_add(out.dim() - 1, m.s2ft_row_idx, x @ m.s2ft_rows.T)  # (..., k) into rows
    if hasattr(m, "s2ft_cols"):
        out = out + x.index_select(x.dim() - 1, m.s2ft_col_idx) @ m.s2ft_cols.T  # (..., out)
    return out


def _pick(total: int, rho: float, rng: np.random.Generator) -> np.ndarray:
    k = 0 if rho <= 0 else max(1, round(rho * total))
    return np.sort(rng.choice(total, size=min(k, total), replace=False))


def select(model: nn.Module, rho: dict[str, float], seed: int) -> dict[str, dict[str, np.ndarray]]:
    """Module name -> {"rows" | "cols": feature indices}, drawn uniformly over all layers."""
    heads, kv, dh = head_geometry(model)
    layers = block_linears(model)
    modules = dict(model.named_modules())
    rng = np.random.default_rng(seed)
    plan: dict[str, dict[str, np.ndarray]] = {}
    # (role, budget key, unit count per layer, unit width, rows or cols)
    kinds = [("v", "v", kv, dh, "rows"), ("o", "o", heads, dh, "cols"),
             ("up", "u", modules[layers[0]["up"]].out_features, 1, "rows"),
             ("down", "d", modules[layers[0]["down"]].in_features, 1, "cols")]
    for role, key, units, width, side in kinds:
        for g in _pick(len(layers) * units, rho[key], rng):
            layer, unit = divmod(int(g), units)
            name = layers[layer][role]
            cur = plan.setdefault(name, {}).get(side, np.zeros(0, dtype=np.int64))
            plan[name][side] = np.concatenate([cur, unit * width + np.arange(width)])
    return plan


def export_adapter(model: nn.Module) -> dict[str, np.ndarray]:
    """The update as an adapter: ``<module>::rows_idx``, ``::rows`` (k, in), ``::cols_idx``, ``::cols``."""
    out = {}
    for name, m in model.named_modules():
        for side in ("rows", "cols"):
            if hasattr(m, f"s2ft_{side}"):
                out[f"{name}::{side}_idx"] = getattr(m, f"s2ft_{side[:3]}_idx").cpu().numpy().copy()
                out[f"{name}::{side}"] = getattr(m, f"s2ft_{side}").detach().cpu().numpy().copy()
    return out


@torch.no_grad()
def load_adapter(model: nn.Module, adapter: dict[str, np.ndarray], sign: float = 1.0) -> None:
    """Add an exported adapter into the base weights (several adapters compose by addition)."""
    modules = dict(model.named_modules())
    for key, idx in adapter.items():
        name, _, part = key.partition("::")
        if not part.endswith("_idx"):
            continue
        w, d = modules[name].weight, torch.from_numpy(adapter[f"{name}::{part[:-4]}"]) * sign
        i = torch.from_numpy(idx)
        if part.startswith("rows"):
            w.index_add_(0, i, d.to(w.dtype))
        else:
            w.index_add_(1, i, d.to(w.dtype))


@register_method("s2ft", S2FTOptions)
class S2FT(BaseMethod):
    description = "structured sparse FT: dense updates of selected heads (o/v) and FFN channels (down/up)"

    def apply(self, model: nn.Module) -> None:
        o = self.options
        freeze_all(model)
        self.plan = select(model, {"v": o.rho_v, "o": o.rho_o, "u": o.rho_u, "d": o.rho_d}, o.seed)
        modules = dict(model.named_modules())
        for name, sides in self.plan.items():
            m = modules[name]
            if "rows" in sides:
                idx = torch.from_numpy(sides["rows"])
                m.register_buffer("s2ft_row_idx", idx, persistent=False)
                m.s2ft_rows = nn.Parameter(torch.zeros(len(idx), m.in_features))
            if "cols" in sides:
                idx = torch.from_numpy(sides["cols"])
                m.register_buffer("s2ft_col_idx", idx, persistent=False)
                m.s2ft_cols = nn.Parameter(torch.zeros(m.out_features, len(idx)))
            setattr(m, _HOOK, m.register_forward_hook(_s2ft_hook))
        unfreeze([new_head(model)])

    @torch.no_grad()
    def finalize(self, model: nn.Module) -> None:
        """Fuse the deltas into the weights and remove the hooks (outputs unchanged)."""
        load_adapter(model, export_adapter(model))
        for m in model.modules():
            if hasattr(m, _HOOK):
                getattr(m, _HOOK).remove()
                delattr(m, _HOOK)
                for attr in ("s2ft_rows", "s2ft_cols", "s2ft_row_idx", "s2ft_col_idx"):
                    if hasattr(m, attr):
                        delattr(m, attr)
