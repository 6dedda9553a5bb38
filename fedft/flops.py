"""FLOPs measured with ``torch.utils.flop_counter.FlopCounterMode``, per party, phase and part.

A :class:`FlopsMeter` is passed explicitly (no global counters). ``measure(party, phase, part,
direction)`` counts the FLOPs of the code it wraps: matmuls, convolutions and attention, each
as 2 x multiply-adds; norms, activations and softmax count 0, as in ``FlopCounterMode``.
On CPU, PyTorch runs ``scaled_dot_product_attention`` as ``_scaled_dot_product_flash_attention
_for_cpu``, which ``FlopCounterMode`` does not know; the meter maps it (and its backward) to
the same formulas as the GPU kernels, so attention is counted on every device.

Counting is not free: a Python dispatch hook runs on every op (its cost is in
experiments/reports/sfprompt.md §5). So when ``measure`` gets a ``key`` (input shapes plus
anything else that changes the work, such as which parameters train), the first call with that
key is counted and later calls reuse the count without the hook. This is exact for
shape-determined FLOPs, which is every op counted here; pass ``cache=False`` to count every
call.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from fedft.accounting import Phase

PARTIES = ("client", "server")
PARTS = ("head", "body", "tail", "full")
DIRECTIONS = ("fwd", "bwd")



def _cpu_sdpa(q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return sdpa_flop_count(q, k, v)  # shapes (B, H, T, d); Q K^T and A V


def _cpu_sdpa_bwd(g: Any, q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return sdpa_backward_flop_count(g, q, k, v)


_aten = torch.ops.aten
CPU_ATTENTION: dict[Any, Any] = {
    _aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
    _aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_bwd,
}

Key = tuple[str, str, str, str]  # (party, phase, part, direction)


def counter() -> FlopCounterMode:
    """A silent ``FlopCounterMode`` that also counts CPU attention kernels."""
    return FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION)


class FlopsMeter:
    """FLOPs by (party, phase, part, direction), with an optional per-shape count cache."""

    def __init__(self, cache: bool = True) -> None:
        self.cache = cache
        self._flops: dict[Key, int] = defaultdict(int)
        self._calls: dict[Key, int] = defaultdict(int)
        self._known: dict[tuple[Key, Hashable], int] = {}
        self.counted = 0  # calls run under FlopCounterMode
        self.reused = 0  # calls answered from the cache

    @staticmethod
    def _key(party: str, phase: str, part: str, direction: str) -> Key:
        if party not in PARTIES:
            raise ValueError(f"party must be one of {PARTIES}, got {party!r}")
        if part not in PARTS:
            raise ValueError(f"part must be one of {PARTS}, got {part!r}")
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        return party, str(Phase(phase)), part, direction

    def add(self, party: str, phase: str, part: str, direction: str, flops: int) -> None:
        """Add a count measured elsewhere (for example by a remote body service)."""
        key = self._key(party, phase, part, direction)
        self._flops[key] += int(flops)
        self._calls[key] += 1

    @contextmanager
    def measure(
        self, party: str, phase: str, part: str, direction: str = "fwd",
        key: Hashable | None = None,
    ) -> Iterator[None]:
        """Count the FLOPs run inside the block; with ``key`` and the cache on, once per key."""
        k = self._key(party, phase, part, direction)
        if self.cache and key is not None and (k, key) in self._known:
            yield
            self.reused += 1
            self.add(*k, self._known[(k, key)])
            return
        with counter() as fc:
            yield
        n = fc.get_total_flops()
        self.counted += 1
        if self.cache and key is not None:
            self._known[(k, key)] = n
        self.add(*k, n)

    def entries(self) -> list[dict[str, Any]]:
        """One row per (party, phase, part, direction) with its FLOPs and number of calls."""
        return [
            dict(party=k[0], phase=k[1], part=k[2], direction=k[3], flops=v, calls=self._calls[k])
            for k, v in sorted(self._flops.items())
        ]

    def _group(self, index: int) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for k, v in self._flops.items():
            out[k[index]] += v
        return dict(sorted(out.items()))

    def by_party(self) -> dict[str, int]:
        return self._group(0)

    def by_phase(self) -> dict[str, int]:
        return self._group(1)

    def by_part(self) -> dict[str, int]:
        return self._group(2)

    def by_direction(self) -> dict[str, int]:
        return self._group(3)

    def total(self, party: str | None = None, phase: str | None = None) -> int:
        """All FLOPs, or those of one party and/or phase."""
        return sum(
            v for k, v in self._flops.items()
            if (party is None or k[0] == party) and (phase is None or k[1] == str(Phase(phase)))
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary: total, per party, per phase, per part and every entry."""
        return dict(
            total=self.total(), by_party=self.by_party(), by_phase=self.by_phase(),
            by_part=self.by_part(), entries=self.entries(),
        )


def _batch_size(batch: Mapping[str, Any]) -> int:
    for v in batch.values():
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            return int(v.shape[0])
    raise ValueError("cannot infer the batch size: no tensor in the batch")


def full_finetune_flops_per_sample(model: nn.Module, batch: Mapping[str, Any]) -> float:
    """FLOPs per sample of forward + backward through the unsplit model, every weight trainable.

    ``model`` is a :class:`~fedft.model.task.TaskModel` (any module with ``loss(logits, batch)``
    works). Trainability flags and existing gradients are restored afterwards.
    """
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
            p.grad = None
        with counter() as fc:
            logits = model(batch)
            model.loss(logits, batch).backward()
    finally:
        for p, flag, g in zip(params, flags, grads, strict=True):
            p.requires_grad_(flag)
            p.grad = g
    return fc.get_total_flops() / _batch_size(batch)
