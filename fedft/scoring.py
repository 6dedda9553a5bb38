"""Sequence scoring for causal language models, through :class:`~fedft.model.task.TaskModel`
(so soft prompts, adapters and split parts composed into one model are all scored the same way).

Every function takes tokenised SFT examples (:class:`~fedft.data.sft.TokenizedExample`) and
scores their labelled tokens: the response, given the prompt. Examples are batched with dynamic
padding in ``batch_size`` groups, under ``torch.no_grad`` and the model's compute precision.

- :func:`token_logprobs`: log p(token | everything before it), per labelled token;
- :func:`sequence_loglik`: their sum and their mean (the length-normalised score);
- :func:`el2n`: the per-example EL2N score (the mean error-vector norm over labelled tokens);
- :func:`perplexity`: exp of the mean negative log-likelihood over all labelled tokens;
- :func:`kl_divergence`: the mean over labelled positions of KL(p || q) between two models'
  next-token distributions on the same text.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedft.data.sft import IGNORE, TokenizedExample, pad_batch


@dataclass(frozen=True)
class SequenceScore:
    total: float  # sum of the labelled tokens' log-probabilities
    tokens: int

    @property
    def mean(self) -> float:
        """Length-normalised log-likelihood (nan without labelled tokens)."""
        return self.total / self.tokens if self.tokens else float("nan")


def _next_token_logprobs(model: nn.Module, items: Sequence[TokenizedExample], pad_id: int,
                         batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Per batch: (B, T-1, V) log-probabilities of the next token and the (B, T-1) targets
    (``IGNORE`` where a position is not scored)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for i in range(0, len(items), batch_size):
        batch = pad_batch(items[i: i + batch_size], pad_id)
        with torch.no_grad():  # never held across the yield: interleaved generators would
            logits = model({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})
            logp = F.log_softmax(logits[:, :-1].float(), dim=-1)  # restore grad mode out of order
        yield logp, batch["labels"][:, 1:]


@contextmanager
def _eval(*models: nn.Module) -> Iterator[None]:
    """Every model in eval mode for the block, each restored to its own mode after."""
    was = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        yield
    finally:
        for m, w in zip(models, was, strict=True):
            m.train(w)


def token_logprobs(model: nn.Module, items: Sequence[TokenizedExample], pad_id: int,
                   batch_size: int = 8) -> list[torch.Tensor]:
    """Per example, the log-probabilities of its labelled tokens (in order, float32)."""
    out = []
    with _eval(model):
        for logp, target in _next_token_logprobs(model, items, pad_id, batch_size):
            scored = target != IGNORE
            picked = logp.gather(-1, target.clamp(min=0)[..., None])[..., 0]  # (B, T-1)
            out.extend(picked[b][scored[b]] for b in range(len(target)))
    return out


def sequence_loglik(model: nn.Module, items: Sequence[TokenizedExample], pad_id: int,
                    batch_size: int = 8) -> list[SequenceScore]:
    """Per example, the sum (and, as ``.mean``, the length-normalised) log-likelihood."""
    return [SequenceScore(float(lp.sum()), len(lp)) for lp in token_logprobs(model, items, pad_id, batch_size)]


def el2n(model: nn.Module, items: Sequence[TokenizedExample], pad_id: int, batch_size: int = 8) -> list[float]:
    """Per example, the EL2N score of a language model (Paul et al., 2021, per token as in
    :func:`fedft.split.step.lm_el2n`): the mean over labelled tokens of ||softmax(z_t) - onehot(y)||_2."""
    out: list[float] = []
    with _eval(model):
        for logp, target in _next_token_logprobs(model, items, pad_id, batch_size):
            scored = target != IGNORE
            sum_p2 = torch.logsumexp(2 * logp, -1).exp()
            p_y = logp.gather(-1, target.clamp(min=0)[..., None])[..., 0].exp()
            dist = (sum_p2 - 2 * p_y + 1).clamp(min=0).sqrt() * scored
            out.extend((dist.sum(-1) / scored.sum(-1).clamp(min=1)).tolist())
    return out


def perplexity(model: nn.Module, items: Sequence[TokenizedExample], pad_id: int, batch_size: int = 8) -> float:
    """exp(mean negative log-likelihood over every labelled token of ``items``)."""
    scores = sequence_loglik(model, items, pad_id, batch_size)
    n = sum(s.tokens for s in scores)
    if n == 0:
        raise ValueError("perplexity: the examples have no labelled tokens")
    return math.exp(-sum(s.total for s in scores) / n)


def kl_divergence(p_model: nn.Module, q_model: nn.Module, items: Sequence[TokenizedExample], pad_id: int,
                  batch_size: int = 8) -> float:
    """Mean over labelled positions of KL(p || q) between the two models' next-token
    distributions (nats); the models must share the tokenizer."""
    total, count = 0.0, 0
    with _eval(p_model, q_model):
        for (lp, target), (lq, _) in zip(_next_token_logprobs(p_model, items, pad_id, batch_size),
                                         _next_token_logprobs(q_model, items, pad_id, batch_size), strict=True):
            if lp.shape[-1] != lq.shape[-1]:
                raise ValueError(f"kl_divergence: vocabularies differ ({lp.shape[-1]} vs {lq.shape[-1]})")
            scored = target != IGNORE
            kl = (lp.exp() * (lp - lq)).sum(-1)  # (B, T-1)
            total += float(kl[scored].sum())
            count += int(scored.sum())
    if count == 0:
        raise ValueError("kl_divergence: the examples have no labelled tokens")
    return total / count
