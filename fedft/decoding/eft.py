"""EFT: emulated fine-tuning and up-scaling (Mitchell et al., ICLR 2024), a decoding method.

Per token: ``log p(v) = log p_base(v) + lam * (log p_ft(v) - log p_ref(v))``, normalised, where
``ft`` was fine-tuned from ``ref``. With a large ``base`` and a small ``ft``/``ref`` pair it is
up-scaling; with a small base and a large pair, down-scaling. ``lam = 1`` is exact emulation
[paper]; the models must share the tokenizer. Temperature, top-k and top-p (the generation config)
apply to the combined distribution, after the combination.

With ``speculative = true`` (up-scaling's speed-up in the paper) the small fine-tuned model drafts
``gamma`` tokens per round and the EFT distribution verifies them
(:mod:`fedft.decoding.speculative`); the tokens are distributed exactly as without it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fedft.decoding.base import DecodingMethod, generate_combined, register_decoder
from fedft.decoding.speculative import GAMMA, cast_weights, speculative_combined
from fedft.generation import Generation, GenerationConfig
from fedft.model.task import TaskModel


@dataclass(frozen=True)
class EFT:
    """Emulated fine-tuning: base + lam * (ft - ref), in log-probability space."""

    lam: float = 1.0  # [paper] 1 = exact emulation; other values rescale the behaviour delta
    names: tuple[str, ...] = ("base", "ft", "ref")

    def __call__(self, logprobs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        base, ft, ref = (logprobs[n] for n in self.names)
        return torch.log_softmax(base + self.lam * (ft - ref), dim=-1)


@dataclass(frozen=True)
class EFTOptions:
    lam: float = 1.0  # [paper] weight of the behaviour delta (ft - ref); 1 = exact emulation
    speculative: bool = False  # [D] off; on: the paper's speculative up-scaling (ft drafts, EFT verifies)
    gamma: int = GAMMA  # [verify] draft tokens per round (speculative only; the paper's value is not stated)

    def __post_init__(self) -> None:
        if self.gamma < 1:
            raise ValueError(f"gamma must be >= 1, got {self.gamma}")


@register_decoder("eft", EFTOptions)
class EFTDecoding(DecodingMethod):
    description = "emulated fine-tuning: large base + lam * (small fine-tuned - small reference)"
    roles = ("base", "ft", "ref")

    def generate(self, models: Mapping[str, TaskModel], tokenizer: Any, prompts: Sequence[Sequence[int]],
                 cfg: GenerationConfig | None = None) -> Generation:
        """Decode with EFT; speculative decoding returns a
        :class:`~fedft.decoding.speculative.SpeculativeGeneration` (with its acceptance counts)."""
        o, combiner = self.options, EFT(lam=self.options.lam)
        if o.speculative:
            return speculative_combined(models, combiner, "ft", tokenizer, prompts, cfg, gamma=o.gamma)
        with torch.no_grad(), cast_weights(models[n] for n in combiner.names):
            return generate_combined(models, combiner, tokenizer, prompts, cfg)
