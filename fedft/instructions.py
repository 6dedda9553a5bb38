"""A rule-checked instruction-following suite: simple, verifiable instructions over neutral topics.

Non-instructional fine-tuning (Xie, Syu, Lee, arXiv 2409.00096) claims that SFT on continuations
of plain text gives a pre-trained model instruction-following ability. The paper measures it with
MT-Bench, Arena Hard (GPT-4 judges) and the Open LLM Leaderboard; none of these runs offline, so
this module stands in with instructions in the style of IFEval (Zhou et al., 2023) whose answers a
pure function can check: the form is graded (one sentence, three lines, capitals), never the facts.

``instruction_suite(seed, n)`` draws ``n`` items, cycling through :data:`KINDS` so every kind
appears once ``n >= len(KINDS)``; the parameters (topic, count, word) are drawn with ``seed``.
``check(item, response)`` says whether ``response`` obeys the item.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

TOPICS = ("the ocean", "autumn", "a bicycle", "fresh bread", "the moon", "a public library", "rain",
          "mountains", "a vegetable garden", "a cup of tea", "a train journey", "snow")
PLURALS = ("fruits", "colours", "sea animals", "musical instruments", "kinds of tree", "vegetables",
           "board games", "kitchen tools", "birds", "flowers")
QUESTIONS = ("What colour is grass?", "What is the opposite of hot?", "Which animal says 'moo'?",
             "What do bees make?", "What is frozen water called?", "Which season comes after winter?",
             "What do you use to write on a blackboard?", "What is the largest planet?")
WORDS = ("apple", "river", "cloud", "stone", "lamp", "violin", "garden", "pencil")
SENTENCES = ("The quick brown fox jumps over the lazy dog.", "A watched pot never boils.",
             "The library opens at nine on Saturdays.", "Green tea is often served without milk.",
             "Most maps put north at the top.", "The train to the coast leaves every hour.")
NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")
WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'-]*")


@dataclass(frozen=True)
class InstructionItem:
    """One verifiable instruction: the ``prompt`` shown to the model, its ``kind`` (which rule
    :func:`check` applies) and the ``params`` that rule reads."""

    prompt: str
    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)


def _words(text: str) -> list[str]:
    return WORD.findall(text)


def _sentences(text: str) -> int:
    """Sentences in ``text``: runs of ``.!?`` followed by a space or the end (a trailing
    unterminated fragment counts as one more)."""
    text = text.strip()
    if not text:
        return 0
    ends = SENTENCE_END.findall(text)
    return len(ends) + (0 if SENTENCE_END.search(text[-1:] + " ") else 1)


# ---- templates: rng -> (prompt, params) -------------------------------------------------

def _one_sentence(rng: random.Random) -> tuple[str, dict]:
    topic = rng.choice(TOPICS)
    return f"Write one sentence about {topic}.", {"topic": topic}


def _list_lines(rng: random.Random) -> tuple[str, dict]:
    n, things = rng.randint(2, 5), rng.choice(PLURALS)
    return f"List {NUMBER_WORDS[n]} {things}, one per line.", {"n": n, "things": things}


def _single_word(rng: random.Random) -> tuple[str, dict]:
    q = rng.choice(QUESTIONS)
    return f"Answer with a single word: {q}", {"question": q}


def _all_caps(rng: random.Random) -> tuple[str, dict]:
    topic = rng.choice(TOPICS)
    return f"Reply in all capital letters: describe {topic} in a few words.", {"topic": topic}


def _lowercase(rng: random.Random) -> tuple[str, dict]:
    topic = rng.choice(TOPICS)
    return f"Reply in lowercase letters only, with no capitals: describe {topic}.", {"topic": topic}


def _repeat_word(rng: random.Random) -> tuple[str, dict]:
    word, n = rng.choice(WORDS), rng.randint(3, 6)
    return f"Write the word {word} {NUMBER_WORDS[n]} times separated by commas.", {"word": word, "n": n}


def _end_with(rng: random.Random) -> tuple[str, dict]:
    topic = rng.choice(TOPICS)
    return (f"Write a short sentence about {topic}. End your answer with the word 'done'.",
            {"topic": topic, "word": "done"})


def _start_with(rng: random.Random) -> tuple[str, dict]:
    word, topic = rng.choice(("Yes", "Today", "Indeed", "Well")), rng.choice(TOPICS)
    return f"Begin your answer with the word '{word}' and then say something about {topic}.", {"word": word}


def _repeat_exact(rng: random.Random) -> tuple[str, dict]:
    s = rng.choice(SENTENCES)
    return f"Repeat this sentence exactly: {s}", {"sentence": s}


def _number_range(rng: random.Random) -> tuple[str, dict]:
    lo = rng.randint(1, 20)
    hi = lo + rng.randint(4, 30)
    return f"Give a number between {lo} and {hi}.", {"lo": lo, "hi": hi}


def _max_words(rng: random.Random) -> tuple[str, dict]:
    n, topic = rng.randint(5, 12), rng.choice(TOPICS)
    return f"Describe {topic} in at most {n} words.", {"n": n, "topic": topic}


def _no_commas(rng: random.Random) -> tuple[str, dict]:
    topic = rng.choice(TOPICS)
    return f"Write two sentences about {topic} without using any commas.", {"topic": topic}


# ---- checks: (params, response) -> bool --------------------------------------------------

def _check_repeat_word(p: Mapping[str, Any], r: str) -> bool:
    parts = [x.strip().lower() for x in r.strip().rstrip(".").split(",")]
    return parts == [p["word"].lower()] * p["n"]


def _check_end_with(p: Mapping[str, Any], r: str) -> bool:
    words = _words(r)
    return bool(words) and words[-1].strip("'").lower() == p["word"]


def _check_start_with(p: Mapping[str, Any], r: str) -> bool:
    words = _words(r)
    return bool(words) and words[0].lower() == p["word"].lower()


def _check_number(p: Mapping[str, Any], r: str) -> bool:
    nums = re.findall(r"-?\d+(?:\.\d+)?", r)
    return len(nums) == 1 and p["lo"] <= float(nums[0]) <= p["hi"]


def _has_letters(r: str) -> bool:
    return any(c.isalpha() for c in r)


CHECKS: dict[str, Callable[[Mapping[str, Any], str], bool]] = {
    "one_sentence": lambda p, r: _sentences(r) == 1 and bool(_words(r)),
    "list_lines": lambda p, r: len([ln for ln in r.splitlines() if ln.strip()]) == p["n"],
    "single_word": lambda p, r: re.fullmatch(r"\s*[A-Za-z0-9][A-Za-z0-9'-]*[.!]?\s*", r) is not None,
    "all_caps": lambda p, r: _has_letters(r) and r == r.upper(),
    "lowercase": lambda p, r: _has_letters(r) and r == r.lower(),
    "repeat_word": _check_repeat_word,
    "end_with": _check_end_with,
    "start_with": _check_start_with,
    "repeat_exact": lambda p, r: r.strip() == p["sentence"],
    "number_range": _check_number,
    "max_words": lambda p, r: 1 <= len(_words(r)) <= p["n"],
    "no_commas": lambda p, r: bool(_words(r)) and "," not in r,
}
TEMPLATES: dict[str, Callable[[random.Random], tuple[str, dict]]] = {
    "one_sentence": _one_sentence, "list_lines": _list_lines, "single_word": _single_word,
    "all_caps": _all_caps, "lowercase": _lowercase, "repeat_word": _repeat_word, "end_with": _end_with,
    "start_with": _start_with, "repeat_exact": _repeat_exact, "number_range": _number_range,
    "max_words": _max_words, "no_commas": _no_commas,
}
KINDS: tuple[str, ...] = tuple(TEMPLATES)


def instruction_suite(seed: int = 0, n: int = 48) -> list[InstructionItem]:
    """``n`` items, kinds in turn (every kind once ``n >= len(KINDS)``), parameters drawn with
    ``seed``: the same seed gives the same list."""
    if n < 0:
        raise ValueError(f"instruction_suite needs n >= 0, got {n}")
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        prompt, params = TEMPLATES[kind](rng)
        out.append(InstructionItem(prompt, kind, params))
    return out


def check(item: InstructionItem, response: str) -> bool:
    """Whether ``response`` obeys ``item`` (a pure function of the two)."""
    if item.kind not in CHECKS:
        raise ValueError(f"unknown instruction kind {item.kind!r}; valid: {', '.join(KINDS)}")
    return bool(CHECKS[item.kind](item.params, response))


def follow_rate(items: list[InstructionItem], responses: list[str]) -> dict[str, Any]:
    """The fraction of responses that obey their item, overall and per kind."""
    if len(items) != len(responses):
        raise ValueError(f"{len(items)} items but {len(responses)} responses")
    per: dict[str, list[bool]] = {}
    for it, r in zip(items, responses, strict=True):
        per.setdefault(it.kind, []).append(check(it, r))
    total = [ok for oks in per.values() for ok in oks]
    return {"n": len(total), "rate": sum(total) / len(total) if total else 0.0,
            "per_kind": {k: sum(v) / len(v) for k, v in sorted(per.items())}}


def run_suite(model: Any, tokenizer: Any, seed: int = 0, n: int = 48, max_new_tokens: int = 64,
              system: str | None = None, batch_size: int = 16) -> dict[str, Any]:
    """Greedy answers of ``model`` (a causal-LM TaskModel) to ``instruction_suite(seed, n)``,
    each prompt in the tokenizer's chat template, and their :func:`follow_rate` (with the answers)."""
    from fedft.generation import GenerationConfig, chat_prompt_ids, generate

    items = instruction_suite(seed, n)
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, seed=seed)
    answers: list[str] = []
    for i in range(0, len(items), batch_size):
        ids = [chat_prompt_ids(tokenizer, it.prompt, system) for it in items[i: i + batch_size]]
        answers.extend(generate(model, tokenizer, ids, cfg).texts)
    return {**follow_rate(items, answers), "answers": answers}
