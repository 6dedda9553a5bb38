"""S3FT, selective self-to-supervised fine-tuning (Gupta et al., "Selective Self-to-Supervised
Fine-Tuning for Generalization in Large Language Models", Findings of NAACL 2025, arXiv
2502.08130), as a data recipe.

Per training example, with the starting model M_0 [paper]:

1. generate its own answer y_hat to the prompt (greedy, the training prompt format);
2. a judge compares y_hat with the gold answer y (numeric answer or exact match here; the paper
   also uses unit tests and an LLM judge for free-form answers);
3. the target is y_hat when the judge accepts it; otherwise M_0's paraphrase of y (asked with the
   gold answer in the prompt, ``paraphrase = true``) when the judge accepts the paraphrase;
   otherwise y.

Training on the result is ordinary SFT (only the targets change). ``paraphrase = false`` is the
paper's "self where correct, else gold" ablation. The report counts the self / paraphrase /
gold targets. Generation is inference only, and the judge needs only the client's own labels,
so a federated client builds its targets once from the model it receives at round 1.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from fedft.data.sft import SFTExample, chat_prompt_ids
from fedft.errors import check
from fedft.generation import GenerationConfig, generate_batched
from fedft.judges import JUDGES
from fedft.recipes.base import Recipe, RecipeContext, RecipeResult, register_recipe

#: [D] how M_0 is asked to paraphrase the gold answer (the paper's prompt is not given)
PARAPHRASE = ("{prompt}\n\nHere is a correct answer:\n{gold}\n\n"
              "Rewrite this answer in your own words. Keep the same final result.")


@dataclass(frozen=True)
class S3FTOptions:
    judge: Literal["numeric", "exact_match"] = "numeric"  # [D] rule-based (the paper: task-specific)
    paraphrase: bool = True  # [paper] try M_0's paraphrase of the gold answer before the gold answer
    max_new_tokens: int = 128  # [D]

    def __post_init__(self) -> None:
        check(self.max_new_tokens >= 1, "recipe.s3ft.max_new_tokens", "an integer >= 1")


def targets(pool: Sequence[SFTExample], own: Sequence[str], para: Sequence[str | None],
            own_ok: Sequence[int], para_ok: Sequence[int | None]) -> list[tuple[SFTExample, str]]:
    """The chosen target of each example and its kind (self / paraphrase / gold), from the
    judge's verdicts (1 = correct)."""
    out = []
    for ex, y_hat, p, v_own, v_para in zip(pool, own, para, own_ok, para_ok, strict=True):
        if v_own == 1 and y_hat:
            out.append((replace(ex, response=y_hat), "self"))
        elif p and v_para == 1:
            out.append((replace(ex, response=p), "paraphrase"))
        else:
            out.append((ex, "gold"))
    return out


@register_recipe("s3ft", options=S3FTOptions)
class S3FTRecipe(Recipe):
    description = "S3FT: train on the model's own correct answers, else its paraphrase of the gold, else the gold (Gupta et al., 2025)"
    federated = True

    def _complete(self, prompts: Sequence[str], ctx: RecipeContext, desc: str) -> list[str]:
        ids = [chat_prompt_ids(ctx.tokenizer, p, ctx.system) for p in prompts]
        gen = GenerationConfig(max_new_tokens=self.options.max_new_tokens)
        return generate_batched(ctx.model, ctx.tokenizer, ids, gen, ctx.batch_size, desc=desc)

    def build(self, pool: Sequence[SFTExample], ctx: RecipeContext) -> RecipeResult:
        opts: S3FTOptions = self.options
        judge = JUDGES[opts.judge]()
        prompts, golds = [ex.prompt for ex in pool], [ex.response for ex in pool]
        own = self._complete(prompts, ctx, "s3ft: own answers")
        own_ok = judge.judge(prompts, own, golds)
        para: list[str | None] = [None] * len(pool)
        para_ok: list[int | None] = [None] * len(pool)
        wrong = [i for i, v in enumerate(own_ok) if v != 1]
        if opts.paraphrase and wrong:
            asks = [PARAPHRASE.format(prompt=prompts[i], gold=golds[i]) for i in wrong]
            texts = self._complete(asks, ctx, "s3ft: paraphrases")
            verdicts = judge.judge([prompts[i] for i in wrong], texts, [golds[i] for i in wrong])
            for i, t, v in zip(wrong, texts, verdicts, strict=True):
                para[i], para_ok[i] = t, v
        chosen = targets(pool, own, para, own_ok, para_ok)
        kinds = Counter(k for _, k in chosen)
        report = {"self": kinds["self"], "paraphrase": kinds["paraphrase"], "gold": kinds["gold"],
                  "self_accuracy": sum(v == 1 for v in own_ok) / max(len(pool), 1)}
        return RecipeResult([ex for ex, _ in chosen], report)
