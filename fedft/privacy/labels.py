"""Label inference from the gradients a tail client sends up (``grads_up``: dL/dz at the body output).

* :func:`known_tail_labels`: the server aggregates the tail (SFPrompt FedAvgs prompts + tail), so it
  knows the tail's weights at the start of a round and the body output ``z`` it sent; for each
  candidate label it computes the gradient the client would send and picks the best match by
  cosine similarity (an analytic attack).
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
    """The label per sample whose cross-entropy gradient at ``z`` (B, ...) best matches ``grads``."""
    sims = []
    for c in range(num_classes):
        zc = z.detach().clone().requires_grad_(True)
        labels = torch.full((z.shape[0],), c, dtype=torch.long)
        F.cross_entropy(tail(zc), labels, reduction="sum").backward()  # per-sample gradients
        assert zc.grad is not None
        sims.append(F.cosine_similarity(zc.grad.flatten(1), grads.flatten(1), dim=1))
    return torch.stack(sims, dim=1).argmax(dim=1)  # (B,)


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
