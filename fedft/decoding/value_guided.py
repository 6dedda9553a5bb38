"""ARGS and controlled decoding (CD): the reward-guided decoders that Transfer Q*
(:mod:`fedft.decoding.tqstar`) is compared with, on its engine (``value_guided_generate``).

ARGS (Khanov, Burapacheep, Li, "ARGS: Alignment as Reward-Guided Search", ICLR 2024): at each
step the top-k tokens z of π_sft get the score log π_sft(z | s_t) + w·r(x, [y_<t, z]), the reward
of the partial sequence (no rollout); the best is taken (ARGS-greedy) or the scores are sampled
from. fedft: the engine with horizon 0 and α = w; greedy or sampled by the GenerationConfig.

Controlled decoding (Mudgal et al., "Controlled Decoding from Language Models", ICML 2024)
trains a prefix scorer V_θ(s) to regress the reward of continuations sampled from the SFT model
itself (CD-FUDGE), and decodes π_sft(z | s)·exp(α V_θ([s, z])) on the top-k ("CD is TQ* with the
SFT model's value" in the TQ* paper's framing). fedft does not train a value head: it uses the
Monte-Carlo quantity the head is trained on, one greedy rollout of π_sft of ``horizon`` tokens
from [s_t, z] scored by r, i.e. TQ* with ρ = π_sft and direct transfer. This is the unbiased
(for a deterministic rollout, exact) target of the head rather than a learned approximation of it,
at k·H rollout forwards per token instead of k value-head calls; a learned head would add a
training run and its own fitting error to the comparison.

Rewards, as for TQ*, are callables ``list[str] -> floats`` on the response text, passed to the
constructor: ``ARGS(options, reward=r)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedft.decoding.base import register_decoder
from fedft.decoding.tqstar import DecodeStats, RewardGuided, direct_value, value_guided_generate
from fedft.generation import Generation, GenerationConfig
from fedft.model.task import TaskModel


@dataclass(frozen=True)
class ARGSOptions:
    k: int = 10  # [paper] candidates per step
    w: float = 1.5  # [paper] reward weight (ARGS's HH-RLHF setting; [verify]; TQ*'s code uses rm_weight 1.0)

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"ARGS needs k >= 1, got {self.k}")


@register_decoder("args", ARGSOptions)
class ARGS(RewardGuided):
    description = "ARGS: top-k of the policy scored by log-prob + w * reward of the partial sequence"
    roles = ("policy",)

    def generate(self, models: Mapping[str, TaskModel], tokenizer: Any, prompts: Sequence[Sequence[int]],
                 cfg: GenerationConfig | None = None, keep_logits: bool = False) -> Generation:
        (policy,) = self._models(models)
        self.last_stats = stats = DecodeStats()
        return value_guided_generate(policy, None, tokenizer, prompts, cfg, k=self.options.k, horizon=0,
                                     alpha=self.options.w, value=direct_value(self._reward(), stats),
                                     keep_logits=keep_logits, stats=stats)


@dataclass(frozen=True)
class CDOptions:
    k: int = 10  # [D] as TQ*'s k, so that the two differ only in the rollout model
    horizon: int = 20  # [D] as TQ*'s direct-transfer rollouts [code]
    alpha: float = 1.0  # [D] as TQ*'s alpha

    def __post_init__(self) -> None:
        if self.k < 1 or self.horizon < 0:
            raise ValueError(f"CD needs k >= 1 and horizon >= 0, got {self.k}, {self.horizon}")


@register_decoder("cd", CDOptions)
class ControlledDecoding(RewardGuided):
    description = "controlled decoding: top-k of the policy re-weighted by exp(alpha V), V from the policy's own rollouts"
    roles = ("policy",)

    def generate(self, models: Mapping[str, TaskModel], tokenizer: Any, prompts: Sequence[Sequence[int]],
                 cfg: GenerationConfig | None = None, keep_logits: bool = False) -> Generation:
        (policy,) = self._models(models)
        o: CDOptions = self.options
        self.last_stats = stats = DecodeStats()
        return value_guided_generate(policy, policy, tokenizer, prompts, cfg, k=o.k, horizon=o.horizon,
                                     alpha=o.alpha, value=direct_value(self._reward(), stats),
                                     keep_logits=keep_logits, stats=stats)
