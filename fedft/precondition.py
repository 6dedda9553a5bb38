"""Input-covariance preconditioning of the task head (the input factor of K-FAC).

A linear classifier ``y = W x + b`` trained by SGD converges at a rate set by the conditioning
of its inputs. Pooled ViT features are badly conditioned: a few eigenvalues of the standardised
feature covariance dominate (experiments/reports/sfprompt.md §2, from
``experiments/analyze_head_conditioning.py``), so a head trained for a few FedAvg rounds stalls
far below what a converged linear probe reaches.

The fix is the input factor of K-FAC (Martens & Grosse, "Optimizing Neural Networks with
Kronecker-factored Approximate Curvature", ICML 2015, https://arxiv.org/abs/1503.05671): with
``x~ = [x; 1]`` and ``S = E[x~ x~^T]``, the gradient of ``[W b]`` is multiplied on the right by
``(S + lambda I)^-1``. That is exactly SGD on whitened inputs, so the step is well conditioned
whatever the feature geometry; the model itself is unchanged. ``lambda`` is ``damping`` times
the mean eigenvalue ``tr(S) / (D + 1)``.

Statistics, federated: ``S`` is a buffer of the model (:class:`HeadStats`, the packed upper
triangle), so it travels and is FedAvg-ed with the other travelling tensors. In each round a
client preconditions with the global ``S`` it received (fixed for the round) and accumulates
a fresh ``S`` from the inputs its head sees; that estimate is what it sends back. Before any
global estimate exists (round 1, or the first epoch of a central run), the running estimate
of the current round is used. The head's inputs must come from the deployed path (the whole
backbone, or head -> body -> tail in split training): SFPrompt's local-loss update feeds the
tail head-only features, a different distribution, so it runs without the preconditioner.

Cost per step: the outer product of the batch (counted by FlopCounterMode) and one Cholesky
solve, factorised once per round while the global ``S`` is fixed (counted analytically:
n^3 / 3 per factorisation, 2 C n^2 per solve); both are client compute in the FLOPs meter.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from fedft.flops import FlopsMeter


def packed_size(n: int) -> int:
    """Entries of the upper triangle of an n x n matrix."""
    return n * (n + 1) // 2


def pack(S: torch.Tensor) -> torch.Tensor:
    """Upper triangle (row-major) of a symmetric matrix, as a vector."""
    i, j = torch.triu_indices(S.shape[0], S.shape[1])
    return S[i, j]


def unpack(v: torch.Tensor, n: int) -> torch.Tensor:
    """The symmetric n x n matrix whose upper triangle is ``v``."""
    i, j = torch.triu_indices(n, n)
    S = torch.zeros(n, n, dtype=v.dtype)
    S[i, j] = v
    S[j, i] = v
    return S


class HeadStats(nn.Module):
    """Second moment of the task head's augmented inputs ``[x; 1]``, a travelling buffer.

    All zeros means "not estimated yet". The bias coordinate's entry ``E[1 * 1]`` is 1 for any
    estimate, and stays positive under FedAvg, so it marks availability.
    """

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.n = in_features + 1
        self.register_buffer("second_moment", torch.zeros(packed_size(self.n)))

    @property
    def available(self) -> bool:
        return bool(self.second_moment[-1] > 0)

    def matrix(self) -> torch.Tensor:
        return unpack(self.second_moment, self.n)

    def set_matrix(self, S: torch.Tensor) -> None:
        self.second_moment.copy_(pack(S))


class HeadPreconditioner:
    """Preconditions the gradient of ``layer`` (an ``nn.Linear``) before each optimizer step.

    Use as: ``with pre.active(): ...forward, backward...; pre.apply()``, then ``opt.step()``;
    ``pre.finish()`` at the end of the round writes this round's estimate into ``stats``.
    """

    def __init__(self, layer: nn.Module, stats: HeadStats, damping: float,
                 flops: FlopsMeter | None = None, phase: str = "") -> None:
        if not isinstance(layer, nn.Linear):
            raise ValueError(f"head preconditioning needs an nn.Linear task head, got {type(layer).__name__}")
        self.layer, self.stats, self.damping = layer, stats, damping
        self.flops, self.phase = flops, phase
        n = stats.n
        self.acc = torch.zeros(n, n, dtype=torch.float64)
        self.count = 0
        self.fixed = stats.matrix().double() if stats.available else None
        self._chol: torch.Tensor | None = None
        self._inputs: list[torch.Tensor] = []
        self._on = False
        self._handle = layer.register_forward_pre_hook(self._capture)

    def _capture(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self._on and torch.is_grad_enabled():
            self._inputs.append(args[0].detach().reshape(-1, self.stats.n - 1))

    @contextmanager
    def active(self) -> Iterator[None]:
        """Record the head's inputs during the forward passes inside this block."""
        self._on = True
        try:
            yield
        finally:
            self._on = False

    def _factor(self, S: torch.Tensor) -> torch.Tensor:
        n = S.shape[0]
        lam = self.damping * torch.trace(S) / n
        return torch.linalg.cholesky(S + lam * torch.eye(n, dtype=S.dtype))

    def apply(self) -> None:
        """Accumulate the recorded inputs and precondition the head's gradient in place."""
        if not self._inputs:
            return
        meter = (self.flops.measure("client", self.phase, "tail", "bwd") if self.flops is not None
                 else _null())
        with meter:
            x = torch.cat(self._inputs).double()
            self._inputs.clear()
            xa = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)  # (B, D + 1)
            self.acc += xa.T @ xa
            self.count += len(xa)
            w, b = self.layer.weight, self.layer.bias
            if w.grad is None:
                return
            n, c = self.stats.n, w.shape[0]
            extra = 4 * c * n * n  # two triangular solves, multiply + add
            if self.fixed is not None:
                if self._chol is None:
                    self._chol = self._factor(self.fixed)
                    extra += n**3 // 3
                chol = self._chol
            else:
                chol = self._factor(self.acc / self.count)
                extra += n**3 // 3
            cols = [w.grad] + ([b.grad[:, None]] if b is not None and b.grad is not None else
                               [torch.zeros_like(w.grad[:, :1])])
            G = torch.cat(cols, dim=1).double()  # (C, D + 1)
            P = torch.cholesky_solve(G.T, chol).T  # G (S + lambda I)^-1
            w.grad.copy_(P[:, :-1].to(w.grad.dtype))
            if b is not None and b.grad is not None:
                b.grad.copy_(P[:, -1].to(b.grad.dtype))
        if self.flops is not None:
            self.flops.add("client", self.phase, "tail", "bwd", extra)

    def finish(self) -> None:
        """Store this round's estimate in the travelling buffer and remove the hook."""
        self._handle.remove()
        if self.count:
            self.stats.set_matrix((self.acc / self.count).to(self.stats.second_moment.dtype))


@contextmanager
def _null() -> Iterator[None]:
    yield


def head_preconditioner(model: nn.Module, damping: float, flops: FlopsMeter | None = None,
                        phase: str = "") -> HeadPreconditioner | None:
    """The preconditioner of ``model``'s task head, or None when the model has no :class:`HeadStats`."""
    stats = getattr(model, "head_stats", None)
    if stats is None:
        return None
    return HeadPreconditioner(model.output_layer, stats, damping, flops, phase)  # type: ignore[attr-defined]
