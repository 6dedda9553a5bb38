"""Extractive QA students, as GeMQuAD uses them (Namboori et al., arXiv 2404.09163).

The student is a span extractor (``BertForQuestionAnswering``; the paper uses XLM-R base, fedft
MiniLM-L6, offline asset ``minilm-l6``): a fresh ``qa_outputs`` head scores every token as the
answer's start and end.

- :func:`preprocess`: SQuAD-style windows with a fast tokenizer (question first, the context
  truncated ``only_second`` into windows of ``max_length`` 384 [D] overlapping by ``doc_stride``
  128 [D]); start/end labels from the character span, the CLS position when a window does not
  hold the whole answer.
- :func:`train_student`: AdamW (lr 3e-5 [D], weight decay 0.01 [D], linear decay, clip 1.0 [D]),
  seeded shuffling, a tqdm bar; returns the per-step losses.
- :func:`predict_spans`: the best span (start <= end, at most ``max_answer_len`` tokens) over all
  windows of an example, scored by log p(start) + log p(end), mapped back to the context's
  characters through the offsets.
- :func:`qa_scores`: SQuAD EM and F1 (0-100), with :mod:`fedft.judges`' normaliser (lower case, no
  punctuation, no English articles, single spaces; the best over several gold answers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedft.judges import exact_match, token_f1

MAX_LENGTH = 384  # [D] the SQuAD fine-tuning default
DOC_STRIDE = 128  # [D] overlap of consecutive windows, in tokens
MAX_ANSWER_LEN = 30  # [D] tokens
STUDENT_LR = 3e-5  # [D]


@dataclass(frozen=True)
class QAItem:
    """One extractive QA example: ``answer`` is ``context[answer_start:answer_start + len(answer)]``
    (``answer_start`` -1: not located). ``correct`` is a known-truth flag for synthetic checks."""

    context: str
    question: str
    answer: str
    answer_start: int
    source: str = ""
    correct: bool | None = None

    @property
    def answer_end(self) -> int:
        return self.answer_start + len(self.answer)


@dataclass
class QAFeatures:
    """Tokenised windows: ``example[f]`` is the item of window ``f``; ``offsets[f][t]`` the
    character span of context token ``t`` (None for question, special and padding tokens)."""

    inputs: dict[str, torch.Tensor]  # input_ids, attention_mask (and token_type_ids), (F, T)
    start_positions: torch.Tensor  # (F,)
    end_positions: torch.Tensor  # (F,)
    example: list[int]
    offsets: list[list[tuple[int, int] | None]]

    def __len__(self) -> int:
        return len(self.example)


@dataclass(frozen=True)
class Prediction:
    """The student's answer span of one item: its text, character start (-1: none) and score
    log p(start) + log p(end) (-inf: no valid span)."""

    text: str
    start: int
    score: float


def _span_labels(offsets: list[tuple[int, int] | None], start: int, end: int, cls: int) -> tuple[int, int]:
    """Token positions of the character span [start, end) in one window; CLS when it is not inside."""
    ctx = [i for i, o in enumerate(offsets) if o is not None]
    if start < 0 or not ctx or offsets[ctx[0]][0] > start or offsets[ctx[-1]][1] < end:
        return cls, cls
    s = next((i for i in ctx if offsets[i][1] > start), cls)  # first token ending after the start
    e = next((i for i in reversed(ctx) if offsets[i][0] < end), cls)  # last token starting before the end
    return s, e


def preprocess(items: Sequence[QAItem], tokenizer: Any, max_length: int = MAX_LENGTH,
               doc_stride: int = DOC_STRIDE) -> QAFeatures:
    """SQuAD-style windows of (question, context) with start/end labels (see the module doc)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("QA preprocessing needs a fast tokenizer (offset mapping)")
    enc = tokenizer([it.question.lstrip() for it in items], [it.context for it in items],
                    truncation="only_second", max_length=max_length, stride=doc_stride, padding=True,
                    return_overflowing_tokens=True, return_offsets_mapping=True)
    example = [int(i) for i in enc["overflow_to_sample_mapping"]]
    cls_id = getattr(tokenizer, "cls_token_id", None)
    starts, ends, offsets = [], [], []
    for f, ids in enumerate(enc["input_ids"]):
        seq = enc.sequence_ids(f)
        offs = [tuple(o) if s == 1 else None for o, s in zip(enc["offset_mapping"][f], seq, strict=True)]
        cls = ids.index(cls_id) if cls_id is not None and cls_id in ids else 0
        it = items[example[f]]
        s, e = _span_labels(offs, it.answer_start, it.answer_end, cls)
        starts.append(s)
        ends.append(e)
        offsets.append(offs)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    inputs = {k: torch.tensor(enc[k], dtype=torch.long) for k in keys}
    return QAFeatures(inputs, torch.tensor(starts), torch.tensor(ends), example, offsets)


def load_student(name: str = "minilm-l6", seed: int = 0, device: str | torch.device | None = None
                 ) -> tuple[Any, Any]:
    """A fresh QA student (``AutoModelForQuestionAnswering``: a seeded new span head on the
    pre-trained encoder) and its fast tokenizer, from an asset name or a directory."""
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    path = Path(name)
    if not path.is_dir():
        from fedft.assets import asset_dir

        path = asset_dir(name)
    tok = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(seed)
    model = AutoModelForQuestionAnswering.from_pretrained(path)
    return model.to(device or "cpu").eval(), tok


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _batch(feats: QAFeatures, idx: torch.Tensor, device: torch.device, labels: bool) -> dict[str, torch.Tensor]:
    out = {k: v[idx].to(device) for k, v in feats.inputs.items()}
    if labels:
        out["start_positions"] = feats.start_positions[idx].to(device)
        out["end_positions"] = feats.end_positions[idx].to(device)
    return out


def train_student(model: Any, tokenizer: Any, items: Sequence[QAItem], epochs: int = 2, lr: float = STUDENT_LR,
                  batch_size: int = 16, max_length: int = MAX_LENGTH, doc_stride: int = DOC_STRIDE, seed: int = 0,
                  weight_decay: float = 0.01, progress: bool = True, desc: str = "student") -> list[float]:
    """Fine-tune ``model`` in place on ``items`` (see the module doc); returns the step losses."""
    from tqdm.auto import tqdm

    if not items:
        return []
    feats = preprocess(items, tokenizer, max_length, doc_stride)
    per_epoch = math.ceil(len(feats) / batch_size)
    total = epochs * per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: max(0.0, 1 - step / total))
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout
    device, losses = _device(model), []
    model.train()
    try:
        with tqdm(total=total, desc=desc, disable=not progress, leave=False) as bar:
            for _ in range(epochs):
                order = torch.randperm(len(feats), generator=gen)
                for b in range(per_epoch):
                    loss = model(**_batch(feats, order[b * batch_size:(b + 1) * batch_size], device, True)).loss
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    opt.step()
                    sched.step()
                    opt.zero_grad(set_to_none=True)
                    losses.append(float(loss.detach()))
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses[-1]:.3f}")
    finally:
        model.eval()
    return losses


@torch.no_grad()
def student_loss(model: Any, tokenizer: Any, items: Sequence[QAItem], batch_size: int = 32,
                 max_length: int = MAX_LENGTH, doc_stride: int = DOC_STRIDE) -> float:
    """The mean span loss (start and end cross-entropy) over the windows of ``items``, eval mode."""
    feats = preprocess(items, tokenizer, max_length, doc_stride)
    model.eval()
    total = 0.0
    for b in range(0, len(feats), batch_size):
        idx = torch.arange(b, min(b + batch_size, len(feats)))
        total += float(model(**_batch(feats, idx, _device(model), True)).loss) * len(idx)
    return total / len(feats)


def best_span(start_logits: torch.Tensor, end_logits: torch.Tensor, offsets: Sequence[tuple[int, int] | None],
              max_answer_len: int = MAX_ANSWER_LEN, n_best: int = 20) -> tuple[float, int, int] | None:
    """The best (score, char start, char end) of one window: start and end on context tokens,
    start <= end, at most ``max_answer_len`` tokens, among the ``n_best`` starts and ends; the
    score is log p(start) + log p(end) over the window's (unpadded) tokens. None without a span."""
    n = len(offsets)
    ls = torch.log_softmax(start_logits[:n].float(), -1)
    le = torch.log_softmax(end_logits[:n].float(), -1)
    k = min(n_best, n)
    best: tuple[float, int, int] | None = None
    for s in ls.topk(k).indices.tolist():
        for e in le.topk(k).indices.tolist():
            os_, oe = offsets[s], offsets[e]
            if os_ is None or oe is None or e < s or e - s + 1 > max_answer_len:
                continue
            score = float(ls[s] + le[e])
            if best is None or score > best[0]:
                best = (score, os_[0], oe[1])
    return best


@torch.no_grad()
def predict_spans(model: Any, tokenizer: Any, items: Sequence[QAItem], batch_size: int = 32,
                  max_length: int = MAX_LENGTH, doc_stride: int = DOC_STRIDE,
                  max_answer_len: int = MAX_ANSWER_LEN) -> list[Prediction]:
    """The student's answer to each item's (context, question): the best span over its windows."""
    if not items:
        return []
    feats = preprocess(items, tokenizer, max_length, doc_stride)
    model.eval()
    best: list[tuple[float, int, int] | None] = [None] * len(items)
    for b in range(0, len(feats), batch_size):
        idx = torch.arange(b, min(b + batch_size, len(feats)))
        out = model(**_batch(feats, idx, _device(model), False))
        lengths = feats.inputs["attention_mask"][idx].sum(-1).tolist()
        for row, f in enumerate(idx.tolist()):
            span = best_span(out.start_logits[row].cpu(), out.end_logits[row].cpu(),
                             feats.offsets[f][: lengths[row]], max_answer_len)
            j = feats.example[f]
            if span is not None and (best[j] is None or span[0] > best[j][0]):
                best[j] = span
    return [Prediction(it.context[s[1]:s[2]], s[1], s[0]) if s else Prediction("", -1, -math.inf)
            for it, s in zip(items, best, strict=True)]


def qa_scores(predictions: Sequence[str], golds: Sequence[str | Sequence[str]]) -> dict[str, float]:
    """SQuAD exact match and token F1, in percent (0-100), and the count ``n``."""
    if len(predictions) != len(golds):
        raise ValueError(f"qa_scores: {len(predictions)} predictions but {len(golds)} gold answers")
    n = len(predictions)
    if n == 0:
        return {"em": 0.0, "f1": 0.0, "n": 0}
    em = sum(exact_match(p, g) for p, g in zip(predictions, golds, strict=True))
    f1 = sum(token_f1(p, g) for p, g in zip(predictions, golds, strict=True))
    return {"em": 100 * em / n, "f1": 100 * f1 / n, "n": n}


def evaluate_student(model: Any, tokenizer: Any, items: Sequence[QAItem], **kwargs: Any) -> dict[str, float]:
    """EM / F1 of the student's spans against the items' answers (``kwargs``: :func:`predict_spans`)."""
    preds = predict_spans(model, tokenizer, items, **kwargs)
    return qa_scores([p.text for p in preds], [it.answer for it in items])
