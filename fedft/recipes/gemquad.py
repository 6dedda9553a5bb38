"""GeMQuAD (Namboori et al., "GeMQuAD: Generating Multilingual Question Answering Datasets from
Large Language Models using Few Shot Learning", arXiv 2404.09163) as a fedft data recipe.

1. Generate: for each unlabelled passage c, a one-shot prompt (one gold context, question and
   answer) asks the generator LM (SmolLM2-135M-Instruct here; AlexaTM 20B in the paper) for one
   ``Question: ...`` / ``Answer: ...`` pair (:func:`generate_silver`). :func:`parse_qa` reads it,
   :func:`verbatim_filter` keeps the pairs whose answer is a span of c (the first case-sensitive
   occurrence; failing that, with ``ignore_case``, the first case-insensitive one, the answer
   then rewritten to the passage's spelling) and :func:`dedupe` drops repeats: the silver pool S_all.
2. Student M_0: an extractive QA model (:mod:`fedft.qa`) fine-tuned on the gold seed set.
3. Filter, rounds k = 1..K (K = 2 [paper]): M_{k-1} answers every (c, q) of the whole pool S_all;
   an item is accepted when its span equals the generated answer after SQuAD normalisation
   [paper] (or, ``match="f1"``, has token F1 >= ``tau``); M_k is fine-tuned from the pre-trained
   checkpoint on the accepted silver S_k first, then on gold (multi-step fine-tuning [paper]).
   :func:`filter_rounds` logs the accepted count per round and, when the items carry a
   ``correct`` flag, the precision of the accepted items against the raw pool's.

:class:`StudentFilter` is step 3's test as a :class:`~fedft.selection.Selector` over QA items.
The recipe returns the accepted silver items and the gold items as SFT pairs (context and
question -> answer), so they can fine-tune an LM too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from fedft.data.sft import SFTExample
from fedft.judges import exact_match, token_f1
from fedft.qa import DOC_STRIDE, MAX_ANSWER_LEN, MAX_LENGTH, STUDENT_LR, Prediction, QAItem
from fedft.recipes.base import Recipe, RecipeContext, RecipeResult, register_recipe

INSTRUCTION = ("Read the passage and write one question about it, whose answer is a short phrase "
               "copied exactly from the passage. Reply in this format:\nQuestion: <question>\nAnswer: <answer>")
STOP = ("Passage:",)  # [D] the model starting another example ends the completion
TAU = 0.8  # [D] token-F1 threshold of match="f1"

_QA = re.compile(r"question\W*?:\s*(?P<q>.+?)\s*answer\W*?:[ \t]*(?P<a>[^\n]*)", re.IGNORECASE | re.DOTALL)
_STRIP = " \t\n*"

Train = Callable[[Sequence[QAItem], Sequence[QAItem]], Any]  # (silver, gold) -> a student
Predict = Callable[[Any, Sequence[QAItem]], Sequence[Prediction]]  # (student, items) -> spans


def qa_prompt(shot: QAItem | None, passage: str) -> str:
    """The one-shot generation prompt: the instruction, the gold example, the new passage (no
    example when ``shot`` is None: for a generator fine-tuned on such prompts)."""
    if shot is None:
        return f"{INSTRUCTION}\n\nPassage: {passage}"
    return (f"{INSTRUCTION}\n\nPassage: {shot.context}\nQuestion: {shot.question}\nAnswer: {shot.answer}"
            f"\n\nPassage: {passage}")


def qa_reply(item: QAItem) -> str:
    """What the generator should write for ``item``: the format :func:`parse_qa` reads."""
    return f"Question: {item.question}\nAnswer: {item.answer}"


def _unquote(text: str) -> str:
    text = text.strip(_STRIP)
    while len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip(_STRIP)
    return text


def parse_qa(text: str) -> tuple[str, str] | None:
    """(question, answer) of the first ``Question: ...`` / ``Answer: ...`` of a completion (labels
    in any case; markdown bold and enclosing quotes stripped; the answer loses one trailing full
    stop); None when malformed: a label missing, an empty part, or a question over several lines."""
    m = _QA.search(text)
    if m is None:
        return None
    q, a = _unquote(m.group("q")), _unquote(m.group("a"))
    a = _unquote(a[:-1]) if a.endswith(".") else a
    if not q or not a or "\n" in q:
        return None
    return q, a


def verbatim_filter(items: Iterable[QAItem], ignore_case: bool = True) -> list[QAItem]:
    """The items whose answer occurs in their context, with ``answer_start`` set to its first
    case-sensitive occurrence, else (``ignore_case``) its first case-insensitive one, the answer
    then taking the context's spelling."""
    out = []
    for it in items:
        at = it.context.find(it.answer) if it.answer else -1
        if at < 0 and ignore_case and it.answer and len(it.context.lower()) == len(it.context):
            at = it.context.lower().find(it.answer.lower())
        if at >= 0:
            out.append(replace(it, answer=it.context[at:at + len(it.answer)], answer_start=at))
    return out


def _squash(text: str) -> str:
    return " ".join(text.lower().split())


def dedupe(items: Iterable[QAItem]) -> list[QAItem]:
    """The first of each (context, question up to case and spacing, answer)."""
    seen: set[tuple[str, str, str]] = set()
    out = []
    for it in items:
        key = (it.context, _squash(it.question), it.answer)
        if key not in seen:
            seen.add(key)
            out.append(it)
    return out


def generate_silver(model: Any, tokenizer: Any, passages: Sequence[str], shot: QAItem | None, gen_cfg: Any = None,
                    batch_size: int = 8, ignore_case: bool = True, progress: bool = True, prefill: str = ""
                    ) -> tuple[list[QAItem], dict[str, int]]:
    """Step 1: one generated (question, answer) per passage, parsed, verbatim-filtered and
    deduplicated; the stats count ``generated``, ``parsed``, ``verbatim`` and ``unique`` items,
    and ``shot_copies``, parsed questions that repeat the example's (dropped) [D]. A ``prefill``
    (e.g. ``"Question:"``) starts the reply: its tokens follow the prompt, and it is put back in
    front of the completion before parsing."""
    from tqdm.auto import tqdm

    from fedft.generation import GenerationConfig, chat_prompt_ids, generate

    cfg = gen_cfg or GenerationConfig(max_new_tokens=64, stop=STOP)
    lead = [int(i) for i in tokenizer(prefill, add_special_tokens=False)["input_ids"]] if prefill else []
    parsed: list[QAItem] = []
    generated = copies = 0
    for b in tqdm(range(0, len(passages), batch_size), desc="generate", disable=not progress, leave=False):
        chunk = passages[b:b + batch_size]
        ids = [chat_prompt_ids(tokenizer, qa_prompt(shot, c)) + lead for c in chunk]
        for j, (c, text) in enumerate(zip(chunk, generate(model, tokenizer, ids, cfg).texts, strict=True)):
            generated += 1
            qa = parse_qa(prefill + text)
            if qa is not None and shot is not None and _squash(qa[0]) == _squash(shot.question):
                copies += 1
            elif qa is not None:
                parsed.append(QAItem(c, qa[0], qa[1], -1, f"silver/{b + j}"))
    verbatim = verbatim_filter(parsed, ignore_case)
    unique = dedupe(verbatim)
    stats = {"generated": generated, "parsed": len(parsed) + copies, "shot_copies": copies,
             "verbatim": len(verbatim), "unique": len(unique)}
    return unique, stats


def agrees(prediction: str, answer: str, match: str = "exact", tau: float = TAU) -> bool:
    """The filter's test: normalised exact match, or (``f1``) token F1 >= ``tau``."""
    if match == "exact":
        return bool(exact_match(prediction, answer))
    return token_f1(prediction, answer) >= tau


@dataclass
class StudentFilter:
    """A :class:`~fedft.selection.Selector` over QA items: keeps the items whose answer the
    student's predicted span agrees with; a ``budget`` keeps the most confident of those (the
    span's log p(start) + log p(end))."""

    predict: Callable[[Sequence[QAItem]], Sequence[Prediction]]  # items -> the student's spans
    match: Literal["exact", "f1"] = "exact"
    tau: float = TAU

    def select(self, pool: Sequence[QAItem], budget: int | None = None) -> list[int]:
        preds = list(self.predict(pool))
        if len(preds) != len(pool):
            raise ValueError(f"StudentFilter: {len(preds)} predictions for {len(pool)} items")
        keep = [i for i, (it, p) in enumerate(zip(pool, preds, strict=True))
                if agrees(p.text, it.answer, self.match, self.tau)]
        if budget is not None:
            keep = sorted(keep, key=lambda i: -preds[i].score)[:budget]
        return sorted(keep)


def precision(items: Sequence[QAItem]) -> float | None:
    """The fraction of the flagged items that are correct (None when none is flagged)."""
    flags = [it.correct for it in items if it.correct is not None]
    return sum(flags) / len(flags) if flags else None


@dataclass
class FilterResult:
    accepted: list[QAItem]  # S_K
    student: Any  # M_K (M_{K-1} when the last model was not trained)
    log: list[dict[str, Any]] = field(default_factory=list)  # one entry per round, 0 = gold only


def filter_rounds(pool: Sequence[QAItem], gold: Sequence[QAItem], train: Train, predict: Predict, rounds: int = 2,
                  match: Literal["exact", "f1"] = "exact", tau: float = TAU, train_last: bool = True) -> FilterResult:
    """Steps 2-3: M_0 = train([], gold); for k = 1..rounds, S_k = the items of the whole pool
    M_{k-1} agrees with, and M_k = train(S_k, gold) (``train`` starts from the pre-trained
    checkpoint each time; the last is skipped without ``train_last``). Each round's log entry
    keeps the pool indices of S_k (``kept``)."""
    pool_precision = precision(pool)
    student = train([], gold)
    log: list[dict[str, Any]] = [{"round": 0, "silver": 0, "gold": len(gold)}]
    accepted: list[QAItem] = []
    for k in range(1, rounds + 1):
        keep = StudentFilter(lambda items, s=student: predict(s, items), match, tau).select(pool)
        accepted = [pool[i] for i in keep]
        log.append({"round": k, "pool": len(pool), "accepted": len(accepted), "precision": precision(accepted),
                    "pool_precision": pool_precision, "kept": keep})
        if k < rounds or train_last:
            student = train(accepted, gold)
    return FilterResult(accepted, student, log)


def student_trainer(opts: GemquadOptions, seed: int = 0, device: Any = None, progress: bool = True) -> Train:
    """A ``train`` for :func:`filter_rounds`: the pre-trained student, fine-tuned on silver, then gold."""
    from fedft.qa import load_student, train_student

    def train(silver: Sequence[QAItem], gold: Sequence[QAItem]) -> tuple[Any, Any]:
        model, tok = load_student(opts.student, seed, device)
        for name, part in (("silver", silver), ("gold", gold)):
            train_student(model, tok, part, opts.epochs, opts.lr, opts.batch_size, opts.max_length,
                          opts.doc_stride, seed, progress=progress, desc=f"student on {name}")
        return model, tok

    return train


def student_predictor(opts: GemquadOptions, batch_size: int = 64) -> Predict:
    """A ``predict`` for :func:`filter_rounds` over the (model, tokenizer) students of :func:`student_trainer`."""
    from fedft.qa import predict_spans

    def predict(student: tuple[Any, Any], items: Sequence[QAItem]) -> list[Prediction]:
        return predict_spans(student[0], student[1], items, batch_size, opts.max_length, opts.doc_stride,
                             opts.max_answer_len)

    return predict


def to_sft(items: Iterable[QAItem], group: str = "") -> list[SFTExample]:
    """Items as SFT pairs: the passage and the question -> the answer span."""
    return [SFTExample(f"{it.context}\n\nQuestion: {it.question}", it.answer, "qa", group) for it in items]


@dataclass(frozen=True)
class GemquadOptions:
    rounds: int = 2  # [paper] K filter rounds
    match: Literal["exact", "f1"] = "exact"  # [paper] the student's span must equal the answer (normalised)
    tau: float = TAU  # [D] token-F1 threshold of match = "f1"
    student: str = "minilm-l6"  # [D] an asset or directory (the paper: XLM-R base)
    epochs: int = 2  # [D] per fine-tuning step (silver, then gold)
    lr: float = STUDENT_LR  # [D]
    batch_size: int = 16  # [D]
    max_length: int = MAX_LENGTH  # [D]
    doc_stride: int = DOC_STRIDE  # [D]
    max_answer_len: int = MAX_ANSWER_LEN  # [D] tokens
    max_new_tokens: int = 64  # [D] of the generator
    prefill: str = "Question:"  # [D] the reply starts with it (a 135M generator rarely keeps the format otherwise)
    ignore_case: bool = True  # [D] verbatim filter: fall back to a case-insensitive match
    gold_sections: str = ""  # [D] comma-separated BBC sections of the gold seed ("" all)
    gold_limit: int = 0  # [D] at most this many gold items (0: all)

    def __post_init__(self) -> None:
        checks = [(self.rounds >= 1, f"rounds must be >= 1, got {self.rounds}"),
                  (self.match in ("exact", "f1"), f"match must be 'exact' or 'f1', got {self.match!r}"),
                  (0 < self.tau <= 1, f"tau must be in (0, 1], got {self.tau}"),
                  (self.epochs >= 1 and self.batch_size >= 1, "epochs and batch_size must be >= 1"),
                  (self.lr > 0, f"lr must be > 0, got {self.lr}"),
                  (0 < self.doc_stride < self.max_length, "need 0 < doc_stride < max_length"),
                  (self.max_answer_len >= 1 and self.max_new_tokens >= 1, "max_answer_len, max_new_tokens >= 1"),
                  (self.gold_limit >= 0, f"gold_limit must be >= 0, got {self.gold_limit}")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@register_recipe("gemquad", options=GemquadOptions)
class GemquadRecipe(Recipe):
    """The pool's prompts are the unlabelled passages; the gold seed is BBC quote attribution
    (:func:`fedft.data.qa_sets.quote_qa`), its first item the one-shot example [D]."""

    description = "GeMQuAD: one-shot synthetic extractive QA filtered by a student over K rounds (Namboori et al., 2023)"

    def build(self, pool: Sequence[SFTExample], ctx: RecipeContext) -> RecipeResult:
        from fedft.assets import asset_dir
        from fedft.data.qa_sets import quote_qa
        from fedft.generation import GenerationConfig

        o: GemquadOptions = self.options
        sections = [s.strip() for s in o.gold_sections.split(",") if s.strip()] or None
        gold = quote_qa(asset_dir("bbc-news"), sections)[: o.gold_limit or None]
        if not gold:
            raise ValueError("gemquad: the gold seed set is empty")
        taken = {it.context for it in gold}
        passages = list(dict.fromkeys(ex.prompt for ex in pool if ex.prompt not in taken))
        cfg = GenerationConfig(max_new_tokens=o.max_new_tokens, seed=ctx.seed, stop=STOP)
        silver, stats = generate_silver(ctx.model, ctx.tokenizer, passages, gold[0], cfg, ctx.batch_size,
                                        o.ignore_case, prefill=o.prefill)
        device = next(ctx.model.parameters()).device
        result = filter_rounds(silver, gold, student_trainer(o, ctx.seed, device), student_predictor(o),
                               o.rounds, o.match, o.tau, train_last=False)
        examples = to_sft(result.accepted, "silver") + to_sft(gold, "gold")
        report = {"generation": stats, "rounds": result.log, "silver": len(result.accepted), "gold": len(gold),
                  "shot": gold[0].source}
        return RecipeResult(examples, report)
