"""Non-instructional fine-tuning (Xie, Syu, Lee, arXiv 2409.00096) as a data recipe.

The paper builds SFT data without any instruction: the first half of a real text (OpenWebText
there; BBC News here) is the user turn, a teacher LM's continuation of it is the assistant turn,
and the text's real second half is discarded [paper]. SFT on these pairs, with the loss on the
response only (fedft's SFT does that), is reported to give instruction-following ability.

- :func:`half_split`: the first half of a text, by words or by tokens, or None when the text is
  shorter than ``min_words`` words [D] (the paper does not state a guard).
- The teacher continues the half as plain text: its prompt is the tokenised half WITHOUT a chat
  template, since the task is a continuation, not a reply [D]. (The paper prompts GPT-3.5-turbo /
  GPT-4-turbo, chat models, to complete the text.) It is ``ctx.model`` unless ``teacher_model``
  names another model; :func:`build_pairs` takes any ``(prompts) -> continuations`` callable.
- :func:`looks_instructional`: a rule-based detector of instruction-like text. It stands in for
  the paper's GPT-4 classifier (which flagged about 0.7% of its data); the recipe reports the
  flagged fraction and, with ``drop_instructional``, drops flagged pairs.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedft.data.sft import SFTExample
from fedft.recipes.base import Recipe, RecipeContext, RecipeResult, register_recipe

TASK = "non_instructional"
SPLITS = ("words", "tokens")
Teacher = Callable[[list[str]], list[str]]

IMPERATIVES = ("Write", "Explain", "List", "Summarize", "Summarise", "Translate", "Give", "Describe",
               "Tell me", "Answer", "Provide", "Generate", "Create", "Compose", "Rewrite", "Classify",
               "Define", "Outline", "Suggest", "Draft", "Calculate", "Solve", "Imagine you", "Pretend",
               "Act as", "Help me", "Show me", "Make a list", "Name three", "Name five", "Complete the")
_LINE_START = r"(?:^|\n)[ \t]*(?:[-*>]\s*)?"
#: (rule, pattern): the first that matches names why a text looks like an instruction [D]
RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("imperative_opening", re.compile(_LINE_START + r"(?:" + "|".join(IMPERATIVES) + r")\b(?![.,;:!?'-])")),
    ("request_to_assistant", re.compile(r"(?:^|\n|[.!?]\s+)\s*(?:Can you|Could you|Would you|Will you|"
                                        r"Please)\b(?![.,;:!?'\"-])")),
    ("qa_markers", re.compile(_LINE_START + r"(?:Q|A|Question|Answer|Instruction|Input|Output|Response|"
                                            r"User|Assistant|Human|AI)\s*:", re.I)),
    ("numbered_steps", re.compile(r"\bStep\s+(?:1|one)\b\s*[:.)-]", re.I)),
    ("assistant_talk", re.compile(r"\b(?:as an AI\b|I'm sorry, but I|I cannot help|Sure[,!] here(?:'s| is)|"
                                  r"Here(?:'s| is) (?:a|an|the|your) (?:summary|list|answer|response|"
                                  r"translation|rewrite))", re.I)),
)


def looks_instructional(text: str) -> str | None:
    """The name of the first rule of :data:`RULES` that ``text`` matches (an imperative opening
    a line, a request to the assistant, Q:/A: markers, "Step 1", assistant talk), else None."""
    for name, pattern in RULES:
        if pattern.search(text):
            return name
    return None


@dataclass(frozen=True)
class NonInstructionalOptions:
    """``[recipe.non_instructional]``: how texts are halved and continued."""

    split: str = "words"  # [D] "words" or "tokens" (with the run's tokenizer)
    min_words: int = 64  # [D] shorter texts are skipped (and counted)
    max_new_tokens: int = 128  # [D] the continuation's length limit
    temperature: float = 0.0  # [D] 0: greedy; > 0: sampling, seeded with the run's seed
    top_p: float = 1.0  # [D]
    drop_instructional: bool = False  # [D] drop pairs the rule detector flags
    batch_size: int = 8  # [D] prompts per teacher call
    teacher_model: str = ""  # [D] "": the model to be tuned; else an asset name, directory or Hub id

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.min_words < 2:
            raise ValueError(f"min_words must be >= 2, got {self.min_words}")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError(f"max_new_tokens and batch_size must be >= 1, got {self.max_new_tokens}, "
                             f"{self.batch_size}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}")


def half_split(text: str, mode: str = "words", min_words: int = 64, tokenizer: Any = None) -> str | None:
    """The first half of ``text`` (None if it has fewer than ``min_words`` words), a prefix of it:

    - ``words``: up to the end of word ``floor(n / 2)`` of its ``n`` whitespace-separated words;
    - ``tokens``: the first ``floor(n / 2)`` of its ``n`` tokens (no special tokens), cut at the
      character offset where that token ends (fast tokenizers) or decoded (others).
    """
    if mode not in SPLITS:
        raise ValueError(f"split mode must be one of {', '.join(SPLITS)}, got {mode!r}")
    words = list(re.finditer(r"\S+", text))
    if len(words) < max(min_words, 2):
        return None
    if mode == "words":
        return text[: words[len(words) // 2 - 1].end()]
    if tokenizer is None:
        raise ValueError("split mode 'tokens' needs a tokenizer")
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        return text[: offsets[len(offsets) // 2 - 1][1]].rstrip() if len(offsets) >= 2 else None
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids[: len(ids) // 2], skip_special_tokens=True) if len(ids) >= 2 else None


def model_teacher(model: Any, tokenizer: Any, opts: NonInstructionalOptions, seed: int = 0,
                  max_prompt_tokens: int | None = None) -> Teacher:
    """A teacher that continues plain-text prompts with ``model`` (a causal-LM TaskModel):
    the prompt is the tokenised text, no chat template; an over-long one keeps its last
    ``max_prompt_tokens`` tokens. Each call samples with its own seed (``seed``, ``seed + 1``, ...)."""
    from fedft.generation import GenerationConfig, chat_prompt_ids, generate

    calls = [0]

    def teacher(prompts: list[str]) -> list[str]:
        ids = [chat_prompt_ids(tokenizer, p, chat=False) for p in prompts]
        if max_prompt_tokens:
            ids = [x[-max_prompt_tokens:] for x in ids]
        cfg = GenerationConfig(max_new_tokens=opts.max_new_tokens, temperature=opts.temperature,
                               top_p=opts.top_p, seed=seed + calls[0])
        calls[0] += 1
        return generate(model, tokenizer, ids, cfg).texts

    return teacher


def _flag_report(flags: Sequence[str | None], pairs: int) -> dict[str, Any]:
    rules = Counter(f for f in flags if f is not None)
    n = sum(rules.values())
    return {"flagged_instructional": n, "flagged_fraction": n / pairs if pairs else 0.0,
            "flagged_rules": dict(sorted(rules.items()))}


def build_pairs(docs: Sequence[str], groups: Sequence[str], teacher: Teacher, opts: NonInstructionalOptions,
                tokenizer: Any = None) -> tuple[list[SFTExample], dict[str, Any]]:
    """(first half, teacher continuation) pairs of ``docs`` as one-turn SFT examples (task
    ``non_instructional``, group from ``groups``) and the report: documents, skipped_short,
    empty_continuations, pairs, flagged_instructional (count, fraction, rule counts), dropped.
    The second halves never reach the teacher or the data."""
    if len(docs) != len(groups):
        raise ValueError(f"{len(docs)} documents but {len(groups)} groups")
    halves = [half_split(d, opts.split, opts.min_words, tokenizer) for d in docs]
    kept = [(h, g) for h, g in zip(halves, groups, strict=True) if h]
    conts: list[str] = []
    for i in range(0, len(kept), opts.batch_size):
        batch = [h for h, _ in kept[i: i + opts.batch_size]]
        out = teacher(batch)
        if len(out) != len(batch):
            raise ValueError(f"the teacher returned {len(out)} continuations for {len(batch)} prompts")
        conts.extend(c.strip() for c in out)
    pairs = [SFTExample(h, c, task=TASK, group=g) for (h, g), c in zip(kept, conts, strict=True) if c]
    flags = [looks_instructional(ex.prompt) or looks_instructional(ex.response) for ex in pairs]
    examples = [ex for ex, f in zip(pairs, flags, strict=True) if not (opts.drop_instructional and f)]
    report = {"documents": len(docs), "skipped_short": len(docs) - len(kept),
              "empty_continuations": len(kept) - len(pairs), "pairs": len(pairs),
              **_flag_report(flags, len(pairs)), "dropped": len(pairs) - len(examples),
              "examples": len(examples), "split": opts.split, "min_words": opts.min_words}
    return examples, report


def bbc_pool(root: Path | str | None = None) -> list[SFTExample]:
    """BBC News articles as a recipe pool: empty prompt, the article (headline first) as the
    response, the section (business, sport, ...) as the group."""
    from fedft.assets import asset_dir
    from fedft.data.sources import load_bbc_news

    texts, labels, names = load_bbc_news(root if root is not None else asset_dir("bbc-news"))
    return [SFTExample("", t, task="document", group=names[int(y)]) for t, y in zip(texts, labels, strict=True)]


def _teacher_for(opts: NonInstructionalOptions, ctx: RecipeContext) -> tuple[Teacher, str]:
    budget = max(ctx.max_length - opts.max_new_tokens, 1)
    if not opts.teacher_model:
        return model_teacher(ctx.model, ctx.tokenizer, opts, ctx.seed, budget), "the model to be tuned"
    from fedft.generation import load_for_generation

    model, tok = load_for_generation(model_name=opts.teacher_model)
    return model_teacher(model, tok, opts, ctx.seed, budget), opts.teacher_model


@register_recipe("non_instructional", options=NonInstructionalOptions)
class NonInstructionalRecipe(Recipe):
    """Pool: documents (the text in ``response``; a non-empty ``prompt`` is put before it).
    Result: (first half, teacher continuation) pairs; the second halves are discarded."""

    description = ("Non-instructional FT: SFT on teacher continuations of the first half of real texts "
                   "(Xie, Syu, Lee, 2024)")
    federated = True  # inference only: a client can continue its own documents

    def build(self, pool: Sequence[SFTExample], ctx: RecipeContext) -> RecipeResult:
        opts: NonInstructionalOptions = self.options
        docs = ["\n".join(x for x in (ex.prompt, ex.response) if x) for ex in pool]
        teacher, name = _teacher_for(opts, ctx)
        examples, report = build_pairs(docs, [ex.group for ex in pool], teacher, opts, ctx.tokenizer)
        report["teacher"] = name
        return RecipeResult(examples, report)
