"""GRAPE (Zhang, Dai, Peng, "The Best Instruction-Tuning Data are Those That Fit", arXiv
2502.04194) as a data recipe, with its controls.

The pool holds several candidate responses per prompt (one :class:`SFTExample` each, ``group`` =
its source). Optionally the model's own samples join as one more source (``self_samples`` per
prompt, seeded), kept only when the judge accepts them against the prompt's other candidates
[paper: for math and code only correct candidates are kept]. Then one candidate per prompt is
chosen by ``selection``:

- ``grape``: the highest length-normalised response log-likelihood under the model to be tuned
  (:class:`fedft.selection.GRAPE`) [paper];
- ``random``: a seeded random candidate; ``longest``: the longest response (characters);
- ``source``: always the candidate of source ``source`` (the "strongest teacher" control),
  else the prompt is dropped.

The report has the chosen sources, the mean score of the chosen candidates and their token-mean
negative log-likelihood under the starting model (``initial_loss``: where training starts).
Scoring and sampling are inference only, so a federated client runs it on its own pool.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from fedft.data.sft import SFTExample, tokenize
from fedft.errors import check
from fedft.generation import GenerationConfig, generate_batched
from fedft.judges import JUDGES
from fedft.recipes.base import Recipe, RecipeContext, RecipeResult, register_recipe
from fedft.scoring import sequence_loglik

SELF = "self"  # the group of the model's own samples


@dataclass(frozen=True)
class GrapeOptions:
    selection: Literal["grape", "random", "longest", "source"] = "grape"
    source: str = "verbose"  # the candidate source ``selection = "source"`` always takes
    self_samples: int = 0  # [D] the model's own samples per prompt added as candidates
    temperature: float = 0.7  # [D] of those samples
    max_new_tokens: int = 96  # [D]
    judge: Literal["numeric", "exact_match", "none"] = "numeric"  # [D] keeps correct own samples
    top_n: int = 1  # [paper] candidates kept per prompt

    def __post_init__(self) -> None:
        check(self.self_samples >= 0, "recipe.grape.self_samples", "an integer >= 0")
        check(self.temperature > 0, "recipe.grape.temperature", "a float > 0")
        check(self.max_new_tokens >= 1 and self.top_n >= 1, "recipe.grape.max_new_tokens/top_n", "integers >= 1")


def own_samples(pool: Sequence[SFTExample], ctx: RecipeContext, opts: GrapeOptions) -> tuple[list[SFTExample], int]:
    """The model's sampled answers to each prompt that the judge accepts (and how many it drew)."""
    from fedft.data.sft import chat_prompt_ids

    first: dict[str, SFTExample] = {}
    for ex in pool:
        first.setdefault(ex.prompt, ex)
    prompts = [p for p in first for _ in range(opts.self_samples)]
    if not prompts:
        return [], 0
    ids = [chat_prompt_ids(ctx.tokenizer, p, ctx.system) for p in prompts]
    gen = GenerationConfig(max_new_tokens=opts.max_new_tokens, temperature=opts.temperature, seed=ctx.seed)
    texts = generate_batched(ctx.model, ctx.tokenizer, ids, gen, ctx.batch_size, desc="grape: own samples")
    golds = [first[p].response for p in prompts]
    ok = ([1] * len(texts) if opts.judge == "none"
          else JUDGES[opts.judge]().judge(prompts, texts, golds))
    kept = [SFTExample(p, t, task=first[p].task, group=SELF) for p, t, v in zip(prompts, texts, ok, strict=True)
            if v == 1 and t]
    return kept, len(prompts)


def choose(pool: Sequence[SFTExample], scores: Sequence[float], opts: GrapeOptions, seed: int) -> list[int]:
    """The kept indices (sorted) of ``pool`` under ``opts.selection``."""
    by_prompt: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(pool):
        by_prompt[ex.prompt].append(i)
    rng = np.random.default_rng([seed, 23])
    keep: list[int] = []
    for idx in by_prompt.values():
        if opts.selection == "grape":
            keep += sorted(idx, key=lambda i: -scores[i])[: opts.top_n]
        elif opts.selection == "random":
            keep += [int(i) for i in rng.permutation(idx)[: opts.top_n]]
        elif opts.selection == "longest":
            keep += sorted(idx, key=lambda i: -len(pool[i].response))[: opts.top_n]
        else:
            keep += [i for i in idx if pool[i].group == opts.source][: opts.top_n]
    return sorted(keep)


@register_recipe("grape", options=GrapeOptions)
class GrapeRecipe(Recipe):
    description = "GRAPE: per instruction, the candidate response the target model finds most probable (Zhang et al., 2025)"
    federated = True

    def build(self, pool: Sequence[SFTExample], ctx: RecipeContext) -> RecipeResult:
        opts: GrapeOptions = self.options
        own, drawn = own_samples(pool, ctx, opts) if opts.self_samples else ([], 0)
        cands = [*pool, *own]
        items = [tokenize(ex, ctx.tokenizer, ctx.max_length, ctx.system) for ex in cands]
        scored = sequence_loglik(ctx.model, items, ctx.pad_id, ctx.batch_size)
        means = [s.mean for s in scored]
        keep = choose(cands, means, opts, ctx.seed)
        tokens = sum(scored[i].tokens for i in keep)
        report = {"selection": opts.selection, "prompts": len({ex.prompt for ex in cands}),
                  "candidates": len(cands), "own_drawn": drawn, "own_kept": len(own),
                  "chosen_sources": dict(Counter(cands[i].group for i in keep)),
                  "chosen_mean_score": float(np.mean([means[i] for i in keep])) if keep else float("nan"),
                  "initial_loss": -sum(scored[i].total for i in keep) / tokens if tokens else float("nan"),
                  "chosen_mean_chars": float(np.mean([len(cands[i].response) for i in keep])) if keep else 0.0}
        return RecipeResult([cands[i] for i in keep], report)
