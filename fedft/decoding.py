"""Decoding-time combination of several models' next-token distributions (the ``LogitCombiner``
interface of EFT and Transfer Q*), on the step-wise interface of :mod:`fedft.generation`.

A combiner maps the per-model next-token log-probabilities of one step, ``{name: (B, V)}``, to
the (B, V) logits to sample from. :func:`generate_combined` prefills every model with the same
prompts, then at every step combines, picks one token per row (greedy or seeded sampling, as
:func:`fedft.generation.generate`), and feeds it to every model's KV cache.

:class:`EFT` is emulated fine-tuning (Mitchell et al., ICLR 2024), per token:
``log p(v) = log p_base(v) + lam * (log p_ft(v) - log p_ref(v))``, normalised. With a large
base and a small fine-tuned/reference pair it is up-scaling; ``lam = 1`` is exact emulation
[paper]; the models must share the tokenizer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from fedft.generation import Generation, GenerationConfig, _decode, prefill, step
from fedft.model.task import TaskModel


class LogitCombiner(Protocol):
    """Per-step arithmetic on several models' next-token log-probabilities."""

    names: tuple[str, ...]  # the models it needs

    def __call__(self, logprobs: Mapping[str, torch.Tensor]) -> torch.Tensor: ...


@dataclass(frozen=True)
class EFT:
    """Emulated fine-tuning: base + lam * (ft - ref), in log-probability space."""

    lam: float = 1.0  # [paper] 1 = exact emulation; other values rescale the behaviour delta
    names: tuple[str, ...] = ("base", "ft", "ref")

    def __call__(self, logprobs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        base, ft, ref = (logprobs[n] for n in self.names)
        return torch.log_softmax(base + self.lam * (ft - ref), dim=-1)


def generate_combined(models: Mapping[str, TaskModel], combiner: LogitCombiner, tokenizer: Any,
                      prompts: Sequence[Sequence[int]], cfg: GenerationConfig | None = None,
                      keep_logits: bool = False) -> Generation:
    """Decode from ``combiner`` over ``models`` (every model fed the same tokens, each with its
    own KV cache); the models must share ``tokenizer``'s vocabulary."""
    missing = set(combiner.names) - set(models)
    if missing:
        raise ValueError(f"the combiner needs models {sorted(missing)}; got {sorted(models)}")
    sizes = {n: m.output_layer.out_features for n, m in models.items() if n in combiner.names}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"the models' vocabularies differ: {sizes}")
    states: dict[str, Any] = {}
    was = {n: m.training for n, m in models.items()}
    for m in models.values():
        m.eval()

    def next_logits(ids: torch.Tensor, mask: torch.Tensor, nxt: torch.Tensor | None) -> torch.Tensor:
        out = {}
        for n in combiner.names:
            if nxt is None:
                logits, states[n] = prefill(models[n], ids, mask)
            else:
                logits = step(models[n], states[n], nxt)
            out[n] = torch.log_softmax(logits, dim=-1)
        return combiner(out)

    try:
        return _decode(models[combiner.names[0]], tokenizer, prompts, cfg or GenerationConfig(), next_logits,
                       keep_logits)
    finally:
        for n, m in models.items():
            m.train(was[n])
