"""Input reconstruction from cut-layer activations.

A server that knows the public weights of the client's head (and the public preprocessing) can
evaluate ``fn``, the map from the client's raw input to what the client sends. When the client
holds no transformer block (SFPrompt's h = 0) that map is affine: patch embedding, position
embeddings and a bilinear resize are all linear in the pixels. :class:`AffineInverse` measures the
map once (``fn`` on the zero input and on each unit input) and inverts observed activations by
least squares, which is exact when the map has full column rank. For a head with blocks,
:func:`optimise_inverse` fits an input to the observation by gradient descent (the white-box
model-inversion attack of the split-learning literature).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Map = Callable[[torch.Tensor], torch.Tensor]  # (B, *input_shape) -> (B, *output_shape)


class AffineInverse:
    """Least-squares inverse of an affine ``fn`` over inputs of ``shape``.

    ``rank`` and ``condition`` describe the measured map: with ``rank`` equal to the input size
    the inverse is exact up to floating point (and the wire codec's rounding).
    """

    def __init__(self, fn: Map, shape: tuple[int, ...], chunk: int = 64) -> None:
        self.shape = shape
        n = int(torch.tensor(shape).prod())
        with torch.no_grad():
            self.offset = fn(torch.zeros(1, *shape)).flatten()  # (m,)
            cols = []
            for start in range(0, n, chunk):
                basis = torch.eye(n)[start:start + chunk].reshape(-1, *shape)
                cols.append(fn(basis).flatten(1) - self.offset)  # (k, m)
        a = torch.cat(cols).T.double()  # (m, n)
        self._a = a.float()
        s = torch.linalg.svdvals(a)
        self.rank = int((s > s[0] * max(a.shape) * torch.finfo(torch.float64).eps).sum())
        self.condition = float(s[0] / s[-1]) if s[-1] > 0 else float("inf")
        self._pinv = torch.linalg.pinv(a)  # (n, m)

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        """The measured affine map applied to inputs (B, *shape): (B, m), to check affinity."""
        return x.flatten(1).float() @ self._a.T + self.offset

    def __call__(self, observed: torch.Tensor) -> torch.Tensor:
        """Reconstruct inputs (B, *shape) from observed outputs (B, *output_shape)."""
        y = observed.flatten(1).double() - self.offset.double()  # (B, m)
        return (y @ self._pinv.T).float().reshape(-1, *self.shape)


def optimise_inverse(fn: Map, observed: torch.Tensor, shape: tuple[int, ...], steps: int = 300,
                     lr: float = 0.05, bounds: tuple[float, float] = (0.0, 1.0), seed: int = 0) -> torch.Tensor:
    """Inputs in ``bounds`` whose ``fn`` matches ``observed`` in least squares (Adam from mid-range)."""
    lo, hi = bounds
    torch.manual_seed(seed)
    logits = torch.zeros(observed.shape[0], *shape, requires_grad=True)  # sigmoid(0): mid-range
    opt = torch.optim.Adam([logits], lr=lr)
    target = observed.detach()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        x = lo + (hi - lo) * torch.sigmoid(logits)
        loss = (fn(x) - target).pow(2).mean()
        loss.backward()
        opt.step()
    return (lo + (hi - lo) * torch.sigmoid(logits)).detach()
