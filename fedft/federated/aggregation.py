"""Pure aggregation functions over ``dict[str, np.ndarray]`` updates, and reply validation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Update = dict[str, np.ndarray]
Spec = dict[str, tuple[tuple[int, ...], str]]  # name -> (shape, dtype str)


def spec_of(update: Update) -> Spec:
    """Shapes and dtypes of an update, the contract every reply must meet."""
    return {k: (tuple(v.shape), str(v.dtype)) for k, v in update.items()}


def weighted_mean(updates: Sequence[Update], weights: Sequence[float]) -> Update:
    """FedAvg: sum_k w_k * u_k / sum_k w_k, per tensor, in float64 then cast back."""
    if not updates:
        raise ValueError("no updates to aggregate")
    if len(updates) != len(weights):
        raise ValueError(f"{len(updates)} updates but {len(weights)} weights")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"weights must sum to > 0, got {total}")
    out: Update = {}
    for key, ref in updates[0].items():
        acc = np.zeros(ref.shape, dtype=np.float64)
        for u, w in zip(updates, weights, strict=True):
            acc += np.asarray(u[key], dtype=np.float64) * (w / total)
        out[key] = acc.astype(ref.dtype)
    return out


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


def check_update(update: Update, spec: Spec) -> str | None:
    """Why ``update`` breaks ``spec`` (missing or extra tensors, shape, dtype, non-finite), or None."""
    missing = sorted(set(spec) - set(update))
    extra = sorted(set(update) - set(spec))
    if missing or extra:
        return f"tensor names differ (missing {missing[:3]}, unexpected {extra[:3]})"
    for k, (shape, dtype) in spec.items():
        v = update[k]
        if tuple(v.shape) != shape or str(v.dtype) != dtype:
            return f"tensor {k!r} is {v.dtype}{tuple(v.shape)}, expected {dtype}{shape}"
        if v.dtype.kind == "f" and not np.isfinite(v).all():
            return f"tensor {k!r} has non-finite values"
    return None
