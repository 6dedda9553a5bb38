"""GreenTrainer: choose the tensors to back-propagate into under a FLOPs budget rho.

Huang et al., "Towards Green AI in Fine-tuning Large Language Models via Adaptive
Backpropagation", ICLR 2024, https://arxiv.org/abs/2309.13192, github pittisl/GreenTrainer;
see docs/methods.md.

Units are modules holding parameters directly (linears, norms, patch projection, embedding
tokens, layer scales, classifier), input to output. Costs are **measured** with
``FlopCounterMode`` on one probe sample rather than derived from OPT-specific formulas: the
backward FLOPs ``D_k`` with only unit k trainable, the weight-gradient FLOPs ``t_dw`` of linears
and convolutions from their shapes, and the activation-path cost ``A_k = D_k - t_dw_k``, so
``T_bp(m) = A_{first selected} + sum_{k in m} t_dw_k`` (the cummax form of the paper).
Budget: ``T_fp + T_bp(m) <= rho (T_fp + T_bp_full)``, i.e. ``rho_bp = rho (1 + r) - r`` with
``r = T_fp / T_bp_full`` (0.05 if <= 0). Importance [paper]: one AdamW step on the probe batch
with every unit trainable, ``I_k = -sum(g_k * dw_k)`` at the new point, normalised; weights are
restored and the probe optimizer is thrown away (the training optimizer is untouched). The DP:
for each choice of first selected unit, a 0/1 knapsack over later units on costs quantised
upwards to ``quant`` steps (exact under the quantisation). Finally the selection is measured
once; while it exceeds the budget the earliest selected unit is dropped, so the measured
backward FLOPs never exceed ``rho_bp`` times the full backward. The classifier always trains.

Schedule: selection runs on the first training batch after ``apply`` and after every
``interval`` epochs (``on_round_start``), from a forward pre-hook. In a federated run each
client selects on its own first batch at the start of each of its rounds (``on_client_round``). Every candidate stays in the
optimizer; unselected tensors get no gradient, and torch optimizers skip them.

What trains and travels: the selected tensors (they change per interval). Split strategies: a
tail client can select over its own tensors unchanged; selecting head tensors forces
activation gradients through the server body, which this cost model (measured on the whole
model) includes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fedft.errors import check
from fedft.flops import counter
from fedft.methods.base import BaseMethod, register_method


@dataclass(frozen=True)
class GreenTrainerOptions:
    """``[method.greentrainer]``: FLOPs budget ``rho`` of full fine-tuning, re-selected every
    ``interval`` epochs."""

    rho: float = 0.5
    interval: int = 2  # epochs between selections
    probe_lr: float = 1e-3
    quant: int = 1000  # T_q: cost quantisation steps of the DP

    def __post_init__(self) -> None:
        check(0 < self.rho <= 1, "method.greentrainer.rho", "a float in (0, 1]")
        check(self.interval >= 1, "method.greentrainer.interval", "an integer >= 1")
        check(self.quant >= 10, "method.greentrainer.quant", "an integer >= 10")


def units(model: nn.Module) -> list[tuple[str, list[nn.Parameter]]]:
    """(module name, its own parameters) in input-to-output order; backbone (no pooler) + head."""
    out = []
    for name, m in model.named_modules():
        ps = list(m.parameters(recurse=False))
        if ps and (name.startswith("backbone.") and ".pooler" not in name or m is model.output_layer):
            out.append((name, ps))
    return out


def _set(groups: list[list[nn.Parameter]], on: list[bool]) -> None:
    for ps, flag in zip(groups, on, strict=True):
        for p in ps:
            p.requires_grad_(flag)


def backward_flops(model: nn.Module, batch: dict[str, Any]) -> int:
    """FLOPs of one backward pass (``FlopCounterMode``, CPU attention included)."""
    loss = model.loss(model(batch), batch)
    if not loss.requires_grad:
        return 0
    with counter() as fc:
        loss.backward()
    model.zero_grad(set_to_none=True)
    return int(fc.get_total_flops())


def _weight_grad_flops(model: nn.Module, batch: dict[str, Any], mods: list[nn.Module]) -> list[int]:
    """t_dw: 2 x MACs of the weight gradient of linears / convolutions (0 for the rest)."""
    rows: dict[int, int] = {}
    hooks = [m.register_forward_hook(lambda m, i, o: rows.__setitem__(id(m), o.numel())) for m in mods]
    with torch.no_grad():
        model(batch)
    for h in hooks:
        h.remove()
    out = []
    for m in mods:
        if isinstance(m, nn.Linear):
            out.append(2 * rows[id(m)] * m.in_features)
        elif isinstance(m, nn.Conv2d):
            out.append(2 * rows[id(m)] * m.in_channels * math.prod(m.kernel_size) // m.groups)
        else:
            out.append(0)
    return out


def activation_costs(model: nn.Module, batch: dict[str, Any], mods: list[nn.Module],
                     dw: np.ndarray) -> np.ndarray:
    """A_k: backward FLOPs spent before the gradient reaches unit k's output, minus later t_dw.

    One counted backward with every unit trainable; a tensor hook on each unit's output reads
    the running FLOPs total. Units whose output hook never fires inherit the next unit's cost,
    and costs are made non-increasing from input to output (an earlier unit needs the longer
    activation-gradient path).
    """
    snap: dict[int, int] = {}
    fc = counter()

    def on_forward(k: int):  # noqa: ANN202
        def fn(m: nn.Module, i: tuple, out: Any) -> None:
            if isinstance(out, torch.Tensor) and out.requires_grad:
                out.register_hook(lambda g: record(k))
        return fn

    def record(k: int) -> None:
        snap.setdefault(k, fc.get_total_flops())

    hooks = [m.register_forward_hook(on_forward(k)) for k, m in enumerate(mods)]
    loss = model.loss(model(batch), batch)
    for h in hooks:
        h.remove()
    with fc:
        loss.backward()
    model.zero_grad(set_to_none=True)
    n = len(mods)
    a = np.zeros(n)
    for k in range(n - 1, -1, -1):
        later = a[k + 1] if k + 1 < n else 0.0
        a[k] = max(snap[k] - dw[k + 1:].sum(), later) if k in snap else later
    return a


def knapsack_select(imp: np.ndarray, a: np.ndarray, dw: np.ndarray, budget: float, quant: int,
                    forced: int) -> list[int]:
    """Best-importance set m with ``a[min m] + sum dw[m] <= budget``; ``forced`` is always in m."""
    n, unit = len(imp), budget / quant
    w = np.ceil(dw / unit).astype(int)
    best, best_set = -np.inf, [forced]
    for s in range(n):
        fixed = math.ceil((a[s] + dw[s]) / unit) + (w[forced] if s != forced else 0)
        cap = quant - fixed
        if cap < 0:
            continue
        items = [j for j in range(s + 1, n) if j != forced]
        dp = np.zeros(cap + 1)
        take = np.zeros((len(items), cap + 1), dtype=bool)
        for t, j in enumerate(items):
            if w[j] <= cap and imp[j] > 0:
                cand = np.full(cap + 1, -np.inf)
                cand[w[j]:] = dp[: cap + 1 - w[j]] + imp[j]
                take[t] = cand > dp
                dp = np.maximum(dp, cand)
        value = dp[cap] + imp[s] + (imp[forced] if s != forced else 0)
        if value > best:
            chosen, c = [], cap
            for t in range(len(items) - 1, -1, -1):
                if take[t, c]:
                    chosen.append(items[t])
                    c -= w[items[t]]
            best, best_set = value, sorted({s, forced, *chosen})
    return best_set


@register_method("greentrainer", GreenTrainerOptions)
class GreenTrainer(BaseMethod):
    description = "FLOPs-budgeted backprop: pick the most important tensors under rho of full-FT FLOPs"

    def apply(self, model: nn.Module) -> None:
        self.units = units(model)
        for p in model.parameters():
            p.requires_grad_(False)
        _set([ps for _, ps in self.units], [True] * len(self.units))
        self.pending, self.selected, self.report = True, [], {}
        model.register_forward_pre_hook(self._maybe_select)

    def describe(self) -> dict:
        r = self.report
        out = {"selected": len(self.selected), "units": len(self.units)}
        if r:
            out.update({k: float(v) for k, v in r.items()})
            out["bwd_flops_ratio"] = float(r["bwd_flops"]) / max(float(r["full_bwd_flops"]), 1.0)
        return out

    def on_round_start(self, model: nn.Module, server_round: int) -> None:
        if server_round > 1 and (server_round - 1) % self.options.interval == 0:
            self.pending = True

    def on_client_round(self, model: nn.Module, server_round: int) -> None:
        """A federated client selects on its own first batch from the global model it just
        received, every round it trains: an earlier selection in this process may be another
        client's, made from that client's data and an older model."""
        self.pending = True

    def _maybe_select(self, model: nn.Module, args: tuple) -> None:
        if self.pending and model.training:
            self.pending = False
            self.select(model, args[0])

    @torch.enable_grad()
    def importance(self, model: nn.Module, batch: dict[str, Any]) -> np.ndarray:
        """First-order loss decrease of one AdamW step per unit, normalised by max |I|."""
        groups = [ps for _, ps in self.units]
        _set(groups, [True] * len(groups))
        params = [p for ps in groups for p in ps]
        saved = [p.detach().clone() for p in params]
        opt = torch.optim.AdamW(params, lr=self.options.probe_lr, weight_decay=0.0)
        model.loss(model(batch), batch).backward()
        opt.step()
        model.zero_grad(set_to_none=True)
        model.loss(model(batch), batch).backward()
        imp = []
        with torch.no_grad():
            k = 0
            for ps in groups:
                imp.append(-sum(float((p.grad * (p - saved[k + i])).sum())
                                for i, p in enumerate(ps) if p.grad is not None))
                k += len(ps)
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)
        model.zero_grad(set_to_none=True)
        out = np.nan_to_num(np.array(imp))
        return out / max(np.abs(out).max(), 1e-30)

    def select(self, model: nn.Module, batch: dict[str, Any]) -> list[str]:
        """Profile, score and solve; sets ``requires_grad`` and returns the selected units."""
        was, self.pending = model.training, False
        imp = self.importance(model, batch)
        probe = {k: v[:1] for k, v in batch.items()}  # FLOPs are linear in the batch size
        groups = [ps for _, ps in self.units]
        n = len(groups)
        mods = dict(model.named_modules())
        dw = np.array(_weight_grad_flops(model, probe, [mods[u] for u, _ in self.units]), dtype=float)
        with counter() as fc, torch.no_grad():
            model(probe)
        t_fp = fc.get_total_flops()
        _set(groups, [True] * n)
        full = backward_flops(model, probe)
        a = activation_costs(model, probe, [mods[u] for u, _ in self.units], dw)
        r = t_fp / max(full, 1)
        rho_bp = self.options.rho * (1 + r) - r
        rho_bp = rho_bp if rho_bp > 0 else 0.05
        head = n - 1
        chosen = knapsack_select(imp, a, dw, rho_bp * full, self.options.quant, head)
        while True:  # measured check: drop the earliest selected unit while over budget
            _set(groups, [i in chosen for i in range(n)])
            got = backward_flops(model, probe)
            if got <= rho_bp * full or chosen == [head]:
                break
            chosen = chosen[1:] if chosen[0] != head else chosen
        model.train(was)
        self.selected = [self.units[i][0] for i in chosen]
        self.report = {"rho_bp": rho_bp, "bwd_flops": got, "full_bwd_flops": full, "fwd_flops": t_fp}
        return self.selected
