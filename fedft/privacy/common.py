"""What every attack shares: the attacker's view of the public head, the wire codec's rounding,
and which rows of the head output carry the input."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from fedft.body.codec import to_wire


@contextmanager
def attacker_view(model: Any, grad: bool = False) -> Iterator[None]:
    """The attacker's copy of the public head: fp32, no defence noise (it cannot know the draw)."""
    from fedft.split.defence import noise_off

    saved = model.compute_dtype
    model.compute_dtype = torch.float32
    try:
        with noise_off(model), torch.enable_grad() if grad else torch.no_grad():
            yield
    finally:
        model.compute_dtype = saved


def wire(t: torch.Tensor, codec: str) -> torch.Tensor:
    return to_wire(t, codec).float()  # type: ignore[arg-type]


def token_rows(model: Any, n_rows: int) -> list[int]:
    """Rows of the head output that carry the input (prompt rows dropped; for images also CLS)."""
    at, p = model.arch.prompt_index, model.n_prompts
    rows = [r for r in range(n_rows) if not at <= r < at + p]
    return rows
