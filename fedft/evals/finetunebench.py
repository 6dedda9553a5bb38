"""FineTuneBench: how well does fine-tuning inject new and updated knowledge into an LM?

The paper (Wu, Wu, Zou, "FineTuneBench", arXiv 2411.05059) fine-tunes commercial models on QA
pairs of new knowledge (fictional people, September-2024 news) and updated knowledge (medical
guidelines, renamed code APIs), then asks the same questions (memorisation) and questions that
need the fact (generalisation: rephrased, secondary yes/no implications, comparisons). Its finding:
memorisation is high, generalisation poor (secondary and comparison near the majority rate), and
updating known facts harder still. Inference: temperature 0, 100 max tokens [code].

fedft's harness (``finetunebench``) generates its own items in the paper's schema from a seed
(:mod:`fedft.evals.ftb_data`): fictional people and fictional news (new knowledge) and
counterfactual edits of capitals and chatterbot trivia (updated knowledge). An update candidate
is kept only when the base model answers it correctly (:meth:`FineTuneBench.prepare`, greedy
generation with the base model). :meth:`training_examples` are the memorisation QAs
(``group`` = the fact's owner, for federated partitions); :meth:`evaluate` asks every question
greedily (chat template, the options' system prompt) and returns, per ``<source>_<qtype>``, the
accuracy, the count and the majority-rate baseline (for yes/no types the share of the commoner
answer, ~0.5; for open types the share of the commonest gold answer); ``new_<qtype>`` pools
people and news; updates report the new-answer, old-answer and other rates.

The judge (:class:`FineTuneBenchJudge`) replaces the paper's LLM judge with rules: yes/no golds
by parsing the completion's yes / no; numeric golds ("172 pounds", "Six") by the completion's
first number (digits or English number words) within a tolerance; text golds by normalised exact
match or the normalised gold as a contiguous phrase of the completion's first line. A model
fine-tuned on short factual answers often stops saying yes or no at all, so yes/no questions are
also scored by a forced choice [D] (``yes_no = "forced"``, the default): the larger next-token
log-sum-exp of the first tokens of "Yes"/"yes" vs "No"/"no" after the prompt. Both scores and the
rate of completions that say neither are reported.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedft.errors import check
from fedft.evals.base import Evaluation, register_evaluation
from fedft.evals.ftb_data import (
    Question,
    UpdateCandidate,
    make_people,
    news_questions,
    people_questions,
    update_candidates,
    update_questions,
)
from fedft.judges import BinaryJudge, normalize_answer

_UNITS = r"(?:\s*(?:pounds?|lbs?|cm|centimet(?:er|re)s?|km|kilomet(?:er|re)s?|years?(?: old)?|people|workers))?"
_NUMBER_GOLD = re.compile(r"^\s*(-?\d[\d,]*(?:\.\d+)?)" + _UNITS + r"\s*\.?\s*$", re.IGNORECASE)
_DIGITS = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen").split()
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
YES = ("yes", "yeah", "yep", "true", "correct")
NO = ("no", "nope", "false", "incorrect")


def _words(text: str) -> list[str]:
    return normalize_answer(text.replace("-", " ")).split()


def word_number(words: Sequence[str]) -> tuple[int, int] | None:
    """(value, words used) of an English number of 0-99 at the start of ``words``, or None."""
    if not words:
        return None
    if words[0] in _ONES:
        return _ONES.index(words[0]), 1
    if words[0] in _TENS:
        unit = _ONES.index(words[1]) if len(words) > 1 and words[1] in _ONES[1:10] else 0
        return _TENS[words[0]] + unit, 1 + (unit > 0)
    return None


def first_number(text: str) -> float | None:
    """The first number of ``text``: digits (thousands separators allowed) or English words (0-99)."""
    digits = _DIGITS.search(text)
    words = _words(text)
    spelled = next(((i, v[0]) for i in range(len(words)) if (v := word_number(words[i:])) is not None), None)
    if digits is None:
        return None if spelled is None else float(spelled[1])
    if spelled is not None and len(_words(text[: digits.start()])) > spelled[0]:
        return float(spelled[1])  # the spelled number comes first
    return float(digits.group().replace(",", ""))


def gold_number(gold: str) -> float | None:
    """The gold's value when the gold is only a number (and a unit), digits or words; else None."""
    m = _NUMBER_GOLD.match(gold)
    if m:
        return float(m.group(1).replace(",", ""))
    words = _words(gold)
    v = word_number(words)
    return float(v[0]) if v is not None and v[1] == len(words) else None


def parse_yes_no(text: str) -> bool | None:
    """True / False for a completion whose first sentence says yes (or yeah, true, correct) or no
    (nope, false, incorrect); None when it says neither or both."""
    words = _words(re.split(r"[.!?\n]", text.strip(), maxsplit=1)[0] if text.strip() else "")
    kinds = {w in YES for w in words if w in YES or w in NO}
    if not words or len(kinds) != 1:
        return None
    return kinds.pop()


def _contains(haystack: list[str], needle: list[str]) -> bool:
    n = len(needle)
    return n > 0 and any(haystack[i: i + n] == needle for i in range(len(haystack) - n + 1))


class FineTuneBenchJudge(BinaryJudge):
    """1 correct, 0 wrong, -1 could not judge (no yes / no, no number) for each completion."""

    def __init__(self, abs_tol: float = 0.5, rel_tol: float = 0.0) -> None:
        self.abs_tol, self.rel_tol = abs_tol, rel_tol

    def one(self, completion: str, gold: str) -> int:
        if gold.strip().lower() in ("yes", "no"):
            said = parse_yes_no(completion)
            return -1 if said is None else int(said == (gold.strip().lower() == "yes"))
        first_line = (completion.strip().splitlines() or [""])[0]
        want = gold_number(gold)
        if want is not None:
            got = first_number(first_line)
            return -1 if got is None else int(abs(got - want) <= max(self.abs_tol, self.rel_tol * abs(want)))
        if normalize_answer(completion) == normalize_answer(gold):
            return 1
        return int(_contains(_words(first_line), _words(gold)))

    def judge(self, prompts, completions, gold_completions=None):  # noqa: ANN001, ANN201 (trl's shape)
        if gold_completions is None or len(gold_completions) != len(completions):
            raise ValueError("FineTuneBenchJudge needs one gold completion per completion")
        return [self.one(c, g) for c, g in zip(completions, gold_completions, strict=True)]

    def update_outcome(self, completion: str, new: str, old: str) -> str:
        """``new`` / ``old`` when the completion gives that answer only, else ``other``."""
        is_new, is_old = self.one(completion, new) == 1, self.one(completion, old) == 1
        return "new" if is_new and not is_old else "old" if is_old and not is_new else "other"


@dataclass(frozen=True)
class FineTuneBenchOptions:
    seed: int = 0  # [D] the generated people, news and the choice of updates
    people: int = 10  # [D] fictional people, 6 attributes each (paper: 25)
    news: int = 16  # [D] fictional news facts (paper: 50 analysed AP-article questions)
    updates: int = 16  # [D] counterfactual edits of facts the base model knows
    comparisons_per_person: int = 2  # [D] comparison questions per person (paper: 150 / 25 = 6)
    trivia_updates: bool = True  # [D] chatterbot's English trivia joins the capitals as update candidates
    max_new_tokens: int = 16  # [D] greedy (paper: temperature 0, 100 tokens [code]); answers are short
    batch_size: int = 16  # [D] generation batch
    system_prompt: str = "Answer the question briefly."  # [D] in training and evaluation alike
    yes_no: str = "forced"  # [D] forced: "Yes" vs "No" next-token logits decide; generate: the parsed completion
    abs_tol: float = 0.5  # [D] numeric tolerance, absolute (integers must match)
    rel_tol: float = 0.0  # [D] numeric tolerance, relative to the gold

    def __post_init__(self) -> None:
        for name in ("people", "news", "updates", "comparisons_per_person"):
            check(getattr(self, name) >= 0, f"evaluation.finetunebench.{name}", "an integer >= 0")
        check(self.max_new_tokens >= 1 and self.batch_size >= 1, "evaluation.finetunebench.max_new_tokens / "
              "batch_size", "integers >= 1")
        check(self.abs_tol >= 0 and self.rel_tol >= 0, "evaluation.finetunebench.abs_tol / rel_tol", "floats >= 0")
        check(self.yes_no in ("forced", "generate"), "evaluation.finetunebench.yes_no", "forced or generate")


def majority_rate(golds: Sequence[str]) -> float:
    """The share of the commonest normalised gold (yes / no types: of the commoner answer)."""
    counts = Counter(normalize_answer(g) for g in golds)
    return max(counts.values()) / len(golds) if golds else float("nan")


@register_evaluation("finetunebench", FineTuneBenchOptions)
class FineTuneBench(Evaluation):
    description = "knowledge injection by fine-tuning: memorised, rephrased, secondary, comparison, updates"

    def __init__(self, options: FineTuneBenchOptions | None = None,
                 trivia: Sequence[tuple[str, str]] | None = None) -> None:
        super().__init__(options)
        o: FineTuneBenchOptions = self.options
        rng = np.random.default_rng([o.seed, 17])
        self.people = make_people(o.people, rng)
        avoid = {p.name.split()[1].lower() for p in self.people}
        self.fixed = people_questions(self.people, o.comparisons_per_person, rng) + news_questions(o.news, rng, avoid)
        if trivia is None:
            trivia = self._chatterbot_trivia() if o.trivia_updates and o.updates else []
        self.candidates: list[UpdateCandidate] = update_candidates(trivia if o.trivia_updates else ())
        self.updates: list[Question] = []
        self.known = 0  # update candidates the base model answered correctly
        self.judge = FineTuneBenchJudge(o.abs_tol, o.rel_tol)

    @staticmethod
    def _chatterbot_trivia() -> list[tuple[str, str]]:
        from fedft.assets import asset_dir
        from fedft.data.sft_sets import trivia

        return [(e.prompt, e.response) for e in trivia(asset_dir("chatterbot"))]

    # --- updates: what the base model knows ---------------------------------------------------

    def prepare(self, base_model: Any, tokenizer: Any) -> list[str]:
        """Ask the base model every update candidate, keep those it answers correctly and draw the
        updates from them; returns its answers (for :meth:`select_updates` from a cache)."""
        answers = self.answer(base_model, tokenizer, [c.prompt for c in self.candidates])
        self.select_updates(answers)
        return answers

    def select_updates(self, base_answers: Sequence[str]) -> None:
        """The updates from the base model's answer to each candidate (in :attr:`candidates` order)."""
        if len(base_answers) != len(self.candidates):
            raise ValueError(f"{len(base_answers)} base answers for {len(self.candidates)} update candidates")
        known = [c for c, a in zip(self.candidates, base_answers, strict=True) if self.judge.one(a, c.old) == 1]
        self.known = len(known)
        self.updates = update_questions(known, self.candidates, self.options.updates,
                                        np.random.default_rng([self.options.seed, 23]))

    # --- questions, training data, answers ---------------------------------------------------

    def questions(self) -> list[Question]:
        return self.fixed + self.updates

    def training_examples(self) -> list:
        """The memorisation QAs as :class:`~fedft.data.sft.SFTExample` (task = source, group = owner)."""
        from fedft.data.sft import SFTExample

        return [SFTExample(q.prompt, q.gold, task=q.source, group=q.owner)
                for q in self.questions() if q.qtype == "memorization"]

    def answer(self, model: Any, tokenizer: Any, prompts: Sequence[str]) -> list[str]:
        """Greedy completions (chat template and system prompt as in training)."""
        from fedft.generation import GenerationConfig, chat_prompt_ids, generate_batched

        if not prompts:
            return []
        o = self.options
        eos = getattr(tokenizer, "eos_token_id", None)
        cfg = GenerationConfig(max_new_tokens=o.max_new_tokens, eos_token_ids=() if eos is None else (int(eos),))
        ids = [chat_prompt_ids(tokenizer, p, o.system_prompt or None) for p in prompts]
        return generate_batched(model, tokenizer, ids, cfg, o.batch_size)

    def choose_yes_no(self, model: Any, tokenizer: Any, prompts: Sequence[str]) -> list[str]:
        """"yes" or "no" per prompt: which of the two words (capitalised or not, their first token)
        has the larger next-token log-sum-exp of logits right after the assistant header."""
        import torch

        from fedft.generation import chat_prompt_ids, left_pad, prefill

        if not prompts:
            return []
        words = {w: sorted({tokenizer(v, add_special_tokens=False)["input_ids"][0] for v in (w, w.capitalize())})
                 for w in ("yes", "no")}
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids = [chat_prompt_ids(tokenizer, p, self.options.system_prompt or None) for p in prompts]
        out: list[str] = []
        was = model.training
        model.eval()
        try:
            for at in range(0, len(ids), self.options.batch_size):
                logits, _ = prefill(model, *left_pad(ids[at: at + self.options.batch_size], pad))
                yes, no = (torch.logsumexp(logits[:, words[w]], dim=-1) for w in ("yes", "no"))
                out += ["yes" if bool(y >= n) else "no" for y, n in zip(yes, no, strict=True)]
        finally:
            model.train(was)
        return out

    def evaluate_rows(self, model: Any, tokenizer: Any) -> list[dict[str, Any]]:
        """Every question with the model's completion and its judgement (and update outcome); yes/no
        questions also with the forced choice between "yes" and "no" and its judgement."""
        qs = self.questions()
        yn = [q for q in qs if q.yes_no]
        chosen = dict(zip([q.qid for q in yn], self.choose_yes_no(model, tokenizer, [q.prompt for q in yn]),
                          strict=True))
        rows = []
        for q, text in zip(qs, self.answer(model, tokenizer, [q.prompt for q in qs]), strict=True):
            row = {"qid": q.qid, "source": q.source, "qtype": q.qtype, "owner": q.owner, "prompt": q.prompt,
                   "gold": q.gold, "old": q.old, "completion": text, "verdict": self.judge.one(text, q.gold)}
            if q.qid in chosen:
                row["choice"] = chosen[q.qid]
            if q.source == "update":
                row["outcome"] = self.judge.update_outcome(text, q.gold, q.old)
            rows.append(row)
        return rows

    def evaluate(self, model: Any, tokenizer: Any) -> dict[str, Any]:
        return self.summarize(self.evaluate_rows(model, tokenizer))

    def summarize(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Per ``<source>_<qtype>`` (and ``new_<qtype>`` over people and news): accuracy (a -1
        counts as wrong), n, majority baseline; yes/no types also ``_generated`` (the parsed
        completion), ``_forced`` (the forced choice; the accuracy under ``yes_no = "forced"``) and
        ``_unparsed`` (completions saying neither); updates also ``new`` / ``old`` / ``other`` rates."""
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            groups.setdefault(f"{r['source']}_{r['qtype']}", []).append(r)
            if r["source"] in ("people", "news"):
                groups.setdefault(f"new_{r['qtype']}", []).append(r)
        out: dict[str, Any] = {"update_candidates": len(self.candidates), "update_known": self.known}
        for key, rs in sorted(groups.items()):
            out[key] = float(np.mean([r["verdict"] == 1 for r in rs]))
            out[f"{key}_n"] = len(rs)
            out[f"{key}_majority"] = majority_rate([r["gold"] for r in rs])
            if rs[0]["gold"] in ("yes", "no"):
                out[f"{key}_unparsed"] = float(np.mean([r["verdict"] == -1 for r in rs]))
                out[f"{key}_generated"] = out[key]
                if all("choice" in r for r in rs):
                    out[f"{key}_forced"] = float(np.mean([r["choice"] == r["gold"] for r in rs]))
                    out[key] = out[f"{key}_forced"] if self.options.yes_no == "forced" else out[key]
            if "outcome" in rs[0]:
                for o in ("new", "old", "other"):
                    out[f"{key}_{o}"] = float(np.mean([r["outcome"] == o for r in rs]))
        return out

    def majority_baselines(self) -> dict[str, float]:
        """The majority-rate baseline of every question type (no model needed)."""
        by: dict[str, list[str]] = {}
        for q in self.questions():
            by.setdefault(f"{q.source}_{q.qtype}", []).append(q.gold)
        return {k: majority_rate(v) for k, v in sorted(by.items())}
