"""K-FAC input-factor preconditioning of the task head (fedft/precondition.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedft.precondition import HeadPreconditioner, HeadStats, pack, packed_size, unpack


def _ill_conditioned(n: int = 256, d: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Features with a large common offset and one dominant correlated direction, 3 classes."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centers = torch.randn(3, d, generator=g) * 0.3
    shared = torch.randn(n, 1, generator=g) * 5.0 * torch.ones(1, d)  # one direction, large variance
    x = 10.0 + centers[y] + shared + 0.1 * torch.randn(n, d, generator=g)
    return x, y


def test_pack_unpack_roundtrip():
    A = torch.randn(5, 5)
    S = A @ A.T
    S = (S + S.T) / 2  # exactly symmetric: A @ A.T need not be on every BLAS
    v = pack(S)
    assert v.shape == (packed_size(5),) == (15,)
    assert torch.equal(unpack(v, 5), S)


def test_gradient_is_right_multiplied_by_the_damped_inverse_second_moment():
    # Prepare: a fixed global second moment and one batch
    torch.manual_seed(0)
    layer = nn.Linear(4, 3)
    stats = HeadStats(4)
    Z = torch.randn(50, 5, dtype=torch.float64)
    S = (Z.T @ Z / 50).float()
    stats.set_matrix(S)
    pre = HeadPreconditioner(layer, stats, damping=0.01)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    # Execute
    with pre.active():
        loss = F.cross_entropy(layer(x), y)
    loss.backward()
    G = np.concatenate([layer.weight.grad.numpy(), layer.bias.grad.numpy()[:, None]], axis=1).astype(np.float64)
    pre.apply()
    # Assert: against numpy, independently
    Sn = S.double().numpy()
    lam = 0.01 * np.trace(Sn) / 5
    want = np.linalg.solve(Sn + lam * np.eye(5), G.T).T
    got = np.concatenate([layer.weight.grad.numpy(), layer.bias.grad.numpy()[:, None]], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_finish_stores_this_rounds_exact_second_moment_and_removes_the_hook():
    layer = nn.Linear(3, 2)
    stats = HeadStats(3)
    assert not stats.available
    pre = HeadPreconditioner(layer, stats, damping=1e-3)
    xs = [torch.randn(4, 3), torch.randn(5, 3)]
    for x in xs:
        with pre.active():
            layer(x).sum().backward()
        pre.apply()
        layer.zero_grad()
    with torch.no_grad(), pre.active():  # no-grad passes (EL2N scoring, evaluation) are not recorded
        layer(torch.randn(7, 3))
    layer(torch.randn(2, 3))  # outside active(): not recorded
    pre.apply()
    pre.finish()
    X = torch.cat(xs).double()
    Xa = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], 1)
    assert stats.available
    torch.testing.assert_close(stats.matrix().double(), Xa.T @ Xa / len(Xa), rtol=1e-5, atol=1e-6)
    assert not layer._forward_pre_hooks


def _train(precondition: bool, steps: int = 60, lr: float = 0.05) -> float:
    torch.manual_seed(0)
    x, y = _ill_conditioned()
    layer = nn.Linear(x.shape[1], 3)
    opt = torch.optim.SGD(layer.parameters(), lr=lr if precondition else lr * 1e-3, momentum=0.9)
    pre = HeadPreconditioner(layer, HeadStats(x.shape[1]), damping=1e-3) if precondition else None
    g = np.random.default_rng(0)
    for _ in range(steps):
        b = torch.from_numpy(g.choice(len(x), 16, replace=False))
        opt.zero_grad()
        if pre is not None:
            with pre.active():
                loss = F.cross_entropy(layer(x[b]), y[b])
        else:
            loss = F.cross_entropy(layer(x[b]), y[b])
        loss.backward()
        if pre is not None:
            pre.apply()
        opt.step()
    with torch.no_grad():
        return float(F.cross_entropy(layer(x), y))


def test_preconditioning_converges_where_plain_sgd_stalls():
    # plain SGD needs a tiny step on these features (offset 10, one variance-25 direction); the
    # best plain rate of a small sweep still ends far above the preconditioned run
    plain = min(_train(False, lr=lr) for lr in (0.5, 5.0, 50.0))
    pre = _train(True)
    assert pre < 0.5 * plain, (pre, plain)


def test_non_linear_head_is_refused():
    with pytest.raises(ValueError, match="nn.Linear"):
        HeadPreconditioner(nn.Sequential(nn.Linear(2, 2)), HeadStats(2), damping=1e-3)
