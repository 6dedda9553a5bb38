"""Label inference from the gradients a tail client sends up (``grads_up``: dL/dz at the body output).

* :func:`known_tail_labels`: the server aggregates the tail (SFPrompt FedAvgs prompts + tail), so it
  knows the tail's weights at the start of a round and the body output ``z`` it sent; the gradient
  sent up is linear in ``softmax - onehot``, which it solves for (an analytic attack).
* :func:`cluster_labels`: no tail knowledge; gradients of samples of one class point alike
  (direction-based attack): k-means on the normalised gradients, clusters matched to classes by the
  assignment that agrees best (an upper bound for an attacker who can name the clusters).
* :func:`norm_scores`: the per-sample gradient norm (norm-based attack of Li et al., ICLR 2022),
  scored by ROC AUC for a binary label.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F


def known_tail_labels(tail: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, grads: torch.Tensor,
                      num_classes: int) -> torch.Tensor:
    """The labels of one batch from the gradient ``grads`` = d mean-CE / d ``z`` its tail sent up.

    The gradient is linear in the loss's gradient at the logits, ``U = (softmax - onehot) / B``
    (through every layer of the tail, batch-coupled ones such as a train-mode BatchNorm included),
    so the server measures that linear map with one vector-Jacobian product per logit, solves for
    ``U`` by least squares, and reads ``onehot = softmax - B U``. A BatchNorm makes the map blind
    to a shift shared by the whole batch; subtracting each class column's batch minimum removes
    it (exact while no class fills the whole batch). The measured map is held densely: B*T*D x B*C
    float64 numbers (147 MB for the main job's batch of 8; a large batch needs an iterative
    solver instead)."""
    zc = z.detach().clone().requires_grad_(True)
    logits = tail(zc)  # (B, C)
    b, c = logits.shape
    if c != num_classes:
        raise ValueError(f"the tail gives {c} logits, expected {num_classes}")
    cols = []
    for k in range(b * c):
        u = torch.zeros(b * c, dtype=logits.dtype)
        u[k] = 1
        (g,) = torch.autograd.grad(logits, zc, u.view(b, c), retain_graph=True)
        cols.append(g.flatten().double())
    jac = torch.stack(cols, dim=1)  # (B*T*D, B*C)
    sol = torch.linalg.lstsq(jac, grads.flatten().double()[:, None], driver="gelsd").solution
    onehot = logits.detach().double().softmax(dim=-1) - b * sol.view(b, c)
    onehot = onehot - onehot.min(dim=0, keepdim=True).values
    return onehot.argmax(dim=1)  # (B,)


def cluster_labels(grads: torch.Tensor, labels: torch.Tensor, num_classes: int, seed: int = 0) -> torch.Tensor:
    """k-means clusters of the gradient directions, each named by the class it best matches."""
    from scipy.optimize import linear_sum_assignment
    from sklearn.cluster import KMeans

    x = F.normalize(grads.flatten(1).double(), dim=1).numpy()
    k = min(num_classes, len(x))
    clusters = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)
    counts = np.zeros((k, num_classes))
    np.add.at(counts, (clusters, labels.numpy()), 1)
    rows, cols = linear_sum_assignment(-counts)
    name = dict(zip(rows.tolist(), cols.tolist(), strict=True))
    return torch.tensor([name[c] for c in clusters])


def norm_scores(grads: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm of the gradient (B,)."""
    return grads.flatten(1).norm(dim=1)


def norm_auc(grads: torch.Tensor, labels: torch.Tensor, permutations: int = 20,
             seed: int = 0) -> tuple[float, float]:
    """How well the gradient norm separates classes: per class present, the one-vs-rest ROC AUC of
    the norm, folded to ``max(AUC, 1 - AUC)`` (the attacker may pick the direction), averaged.

    Returns ``(auc, chance)``; ``chance`` is the same statistic with the labels permuted (the
    folding puts it above 0.5 on a finite sample), averaged over ``permutations``."""
    from sklearn.metrics import roc_auc_score

    scores = norm_scores(grads).double().numpy()

    def stat(y: np.ndarray) -> float:
        aucs = [roc_auc_score(y == c, scores) for c in np.unique(y) if 0 < (y == c).sum() < len(y)]
        return float(np.mean([max(a, 1 - a) for a in aucs])) if aucs else 0.5

    y = labels.numpy()
    rng = np.random.default_rng(seed)
    return stat(y), float(np.mean([stat(rng.permutation(y)) for _ in range(permutations)]))
