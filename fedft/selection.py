"""Data selection for SFT (the ``Selector`` interface of GRAPE, GOT-D, GeMQuAD's filter, S3FT).

A selector maps a pool (SFT examples, or texts for GOT-D) and a budget to the indices it keeps,
in input order, so the caller can keep any parallel metadata aligned.

- :class:`RandomSelector`: a seeded random subset (the control every selector is compared to).
- :class:`EL2N`: the ``budget`` examples with the highest EL2N score under ``model`` (the
  hardest, as SFPrompt's dataset pruning keeps them; Paul et al., NeurIPS 2021).
- GOT-D and its target-similarity control are in :mod:`fedft.recipes.got_d`, GeMQuAD's student
  filter in :mod:`fedft.recipes.gemquad`.
- :class:`GRAPE` (Zhang, Dai, Peng, arXiv 2502.04194): among the candidate responses of each
  prompt, keep the ``top_n`` the target model finds most probable, by length-normalised
  response log-likelihood under the SFT template [paper]. Scoring is inference only, so a
  federated client can score its own candidates before training.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from torch import nn

from fedft.data.sft import SFTExample, tokenize
from fedft.scoring import el2n, sequence_loglik


class Selector(Protocol):
    """Picks at most ``budget`` items of ``pool`` (all it keeps when ``budget`` is None) and
    returns their indices in increasing order, so parallel metadata stays aligned."""

    def select(self, pool: Sequence[Any], budget: int | None = None) -> list[int]: ...


@dataclass(frozen=True)
class RandomSelector:
    """``n`` examples (or ``fraction`` of them) drawn without replacement with ``seed``."""

    n: int | None = None
    fraction: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n is not None and self.fraction is not None:
            raise ValueError("RandomSelector takes at most one of n and fraction (or a budget at select)")
        if (self.n is not None and self.n < 0) or (self.fraction is not None and not 0 <= self.fraction <= 1):
            raise ValueError(f"RandomSelector: n >= 0 or 0 <= fraction <= 1, got {self.n}, {self.fraction}")

    def select(self, pool: Sequence[Any], budget: int | None = None) -> list[int]:
        """``budget`` items (else ``n``, else ``fraction`` of the pool, else all), seeded."""
        k = (budget if budget is not None else self.n if self.n is not None
             else round(self.fraction * len(pool)) if self.fraction is not None else len(pool))
        pick = np.random.default_rng(self.seed).permutation(len(pool))[: min(k, len(pool))]
        return sorted(int(i) for i in pick)


@dataclass
class GRAPE:
    """Per prompt, the ``top_n`` candidates with the highest mean response log-probability
    under ``model`` (the untuned target)."""

    model: nn.Module
    tokenizer: Any
    max_length: int = 512
    top_n: int = 1
    batch_size: int = 8
    system: str | None = None

    def scores(self, examples: Sequence[SFTExample]) -> list[float]:
        """s(x, y) = (1/|y|) sum_t log p(y_t | x, y_<t), response tokens only."""
        items = [tokenize(ex, self.tokenizer, self.max_length, self.system) for ex in examples]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        return [s.mean for s in sequence_loglik(self.model, items, pad, self.batch_size)]

    def select(self, pool: Sequence[SFTExample], budget: int | None = None) -> list[int]:
        """The ``top_n`` best candidates of each prompt; with a ``budget``, the best-scoring of those."""
        if self.top_n < 1:
            raise ValueError(f"GRAPE top_n must be >= 1, got {self.top_n}")
        s = self.scores(pool)
        by_prompt: dict[str, list[int]] = defaultdict(list)
        for i, ex in enumerate(pool):
            by_prompt[ex.prompt].append(i)
        keep = [i for idx in by_prompt.values() for i in sorted(idx, key=lambda i: -s[i])[: self.top_n]]
        if budget is not None:
            keep = sorted(keep, key=lambda i: -s[i])[:budget]
        return sorted(keep)


@dataclass
class EL2N:
    """The ``budget`` examples (all when None) with the highest EL2N under ``model``."""

    model: nn.Module
    tokenizer: Any
    max_length: int = 512
    batch_size: int = 8
    system: str | None = None

    def scores(self, pool: Sequence[SFTExample]) -> list[float]:
        items = [tokenize(ex, self.tokenizer, self.max_length, self.system) for ex in pool]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        return el2n(self.model, items, pad, self.batch_size)

    def select(self, pool: Sequence[SFTExample], budget: int | None = None) -> list[int]:
        s = self.scores(pool)
        order = sorted(range(len(pool)), key=lambda i: -s[i])
        return sorted(order[: len(pool) if budget is None else budget])
