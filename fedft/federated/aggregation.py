"""FedAvg over ``dict[str, np.ndarray]`` updates, dense and sparse (validation: :mod:`fedft.federated.payload`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Update = dict[str, np.ndarray]


def aggregate(updates: Sequence[Update], weights: Sequence[float]) -> Update:
    """FedAvg per tensor over its senders; sparse pairs: weighted mean per index over its senders."""
    if not updates:
        raise ValueError("no updates to aggregate")
    if len(updates) != len(weights) or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError("need one non-negative weight per update, summing to > 0")
    out: Update = {}
    keys = sorted({k for u in updates for k in u})
    for key in keys:
        name, _, part = key.partition("::")
        if part == "val":
            continue
        senders = [(u, w) for u, w in zip(updates, weights, strict=True) if key in u]
        total = sum(w for _, w in senders) or 1.0
        if part == "idx":
            idx = np.unique(np.concatenate([u[key] for u, _ in senders]))
            acc = np.zeros(len(idx), dtype=np.float64)
            wsum = np.zeros(len(idx), dtype=np.float64)
            for u, w in senders:
                pos = np.searchsorted(idx, u[key])
                acc[pos] += w * u[name + "::val"].astype(np.float64)
                wsum[pos] += w
            out[key], out[name + "::val"] = idx, (acc / np.maximum(wsum, 1e-300)).astype(np.float32)
        else:
            ref = senders[0][0][key]
            acc = np.zeros(ref.shape, dtype=np.float64)
            for u, w in senders:
                acc += np.asarray(u[key], dtype=np.float64) * (w / total)
            out[key] = acc.astype(ref.dtype)
    return out
