"""Metrics and judges for generated text.

Metrics:
- :func:`exact_match` and :func:`token_f1`, SQuAD-style: lower-case, strip punctuation and
  articles, collapse whitespace; the best score over several gold answers;
- :func:`extract_number`: the numeric answer of a completion;
- :func:`bleu` (sacrebleu, corpus level) and :func:`rouge_l` (rouge-score, F-measure).

Judges have the shape of trl's judges, ``judge(prompts, completions, gold_completions=None)``,
so a model judge can replace a rule. A :class:`BinaryJudge` returns 1 (correct), 0 (wrong) or
-1 (could not judge, e.g. no number in the completion); a :class:`ScoreJudge` returns a float
per completion. :class:`UnitTestJudge` runs each completion against its gold code in the
sandbox (:mod:`fedft.sandbox`).
"""

from __future__ import annotations

import re
import string
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def normalize_answer(text: str) -> str:
    """SQuAD's normaliser: lower case, no punctuation, no articles, single spaces."""
    text = "".join(c for c in text.lower() if c not in set(string.punctuation))
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, golds: str | Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer."""
    golds = [golds] if isinstance(golds, str) else list(golds)
    return float(any(normalize_answer(prediction) == normalize_answer(g) for g in golds))


def _f1(pred: list[str], gold: list[str]) -> float:
    if not pred or not gold:
        return float(pred == gold)
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    p, r = same / len(pred), same / len(gold)
    return 2 * p * r / (p + r)


def token_f1(prediction: str, golds: str | Sequence[str]) -> float:
    """SQuAD token F1 of the normalised prediction, the best over the gold answers."""
    golds = [golds] if isinstance(golds, str) else list(golds)
    pred = normalize_answer(prediction).split()
    return max(_f1(pred, normalize_answer(g).split()) for g in golds)


def extract_number(text: str) -> float | None:
    """The answer's number: the one after a final ``####`` marker if there is one, else the last
    number in the text (thousands separators allowed); None without a number."""
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def bleu(predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]]) -> float:
    """Corpus BLEU (sacrebleu, 0-100) of the predictions against one reference each (a string)
    or several (a list per prediction)."""
    import sacrebleu

    if len(predictions) != len(references):
        raise ValueError(f"bleu: {len(predictions)} predictions but {len(references)} references")
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    width = max(len(r) for r in refs)
    streams = [[r[i] if i < len(r) else r[0] for r in refs] for i in range(width)]
    return float(sacrebleu.corpus_bleu(list(predictions), streams).score)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (rouge-score, stemmed), 0-1."""
    from rouge_score import rouge_scorer

    return float(rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(reference, prediction)["rougeL"].fmeasure)


class BinaryJudge(ABC):
    """1 correct, 0 wrong, -1 could not judge; per completion."""

    @abstractmethod
    def judge(self, prompts: Sequence[str], completions: Sequence[str],
              gold_completions: Sequence[str] | None = None) -> list[int]: ...


class ScoreJudge(ABC):
    """A float score per completion (higher is better)."""

    @abstractmethod
    def judge(self, prompts: Sequence[str], completions: Sequence[str],
              gold_completions: Sequence[str] | None = None) -> list[float]: ...


def _golds(judge: str, completions: Sequence[str], golds: Sequence[str] | None) -> Sequence[str]:
    if golds is None or len(golds) != len(completions):
        raise ValueError(f"{judge} needs one gold completion per completion")
    return golds


class ExactMatchJudge(BinaryJudge):
    def judge(self, prompts, completions, gold_completions=None):
        golds = _golds("ExactMatchJudge", completions, gold_completions)
        return [int(exact_match(c, g)) for c, g in zip(completions, golds, strict=True)]


class NumericJudge(BinaryJudge):
    """The completion's number equals the gold's (within ``tol``); -1 without a number."""

    def __init__(self, tol: float = 1e-6) -> None:
        self.tol = tol

    def judge(self, prompts, completions, gold_completions=None):
        out = []
        for c, g in zip(completions, _golds("NumericJudge", completions, gold_completions), strict=True):
            got, want = extract_number(c), extract_number(g)
            out.append(-1 if got is None or want is None else int(abs(got - want) <= self.tol))
        return out


class F1Judge(ScoreJudge):
    def judge(self, prompts, completions, gold_completions=None):
        golds = _golds("F1Judge", completions, gold_completions)
        return [token_f1(c, g) for c, g in zip(completions, golds, strict=True)]


class UnitTestJudge(BinaryJudge):
    """The completion (test code) passes against the gold completion (the code under test),
    run in the sandbox as ``solution.py`` beside the tests; 1 pass, 0 fail or timeout."""

    def __init__(self, timeout_s: float = 10.0, memory_mb: int = 512) -> None:
        from fedft.sandbox import Limits

        self.limits = Limits(timeout_s=timeout_s, cpu_s=max(1, int(timeout_s)), memory_mb=memory_mb)

    def judge(self, prompts, completions, gold_completions=None):
        from fedft.sandbox import run_python

        golds = _golds("UnitTestJudge", completions, gold_completions)
        return [int(run_python(tests, self.limits, {"solution.py": code}).ok)
                for tests, code in zip(completions, golds, strict=True)]


#: the rule-based judges by config name (generate.judge, recipe judges)
JUDGES: dict[str, type[BinaryJudge] | type[ScoreJudge]] = {"exact_match": ExactMatchJudge, "f1": F1Judge,
                                                          "numeric": NumericJudge}
