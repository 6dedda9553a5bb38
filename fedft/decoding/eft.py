"""EFT: emulated fine-tuning and up-scaling (Mitchell et al., ICLR 2024), a decoding method.

Per token: ``log p(v) = log p_base(v) + lam * (log p_ft(v) - log p_ref(v))``, normalised, where
``ft`` was fine-tuned from ``ref``. With a large ``base`` and a small ``ft``/``ref`` pair it is
up-scaling; with a small base and a large pair, down-scaling. ``lam = 1`` is exact emulation
[paper]; the models must share the tokenizer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fedft.decoding.base import DecodingMethod, generate_combined, register_decoder
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


@register_decoder("eft", EFTOptions)
class EFTDecoding(DecodingMethod):
    description = "emulated fine-tuning: large base + lam * (small fine-tuned - small reference)"
    roles = ("base", "ft", "ref")

    def generate(self, models: Mapping[str, TaskModel], tokenizer: Any, prompts: Sequence[Sequence[int]],
                 cfg: GenerationConfig | None = None) -> Generation:
        return generate_combined(models, EFT(lam=self.options.lam), tokenizer, prompts, cfg)
