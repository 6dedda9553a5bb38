"""Sequence scoring through TaskModel (fedft.scoring) on tiny random Llama models."""

from __future__ import annotations

import math

import pytest
import torch

from fedft import scoring
from fedft.data import sft
from fedft.data.sft import SFTExample
from fedft.model.tiny import tiny_chat_tokenizer, tiny_task_model

EXAMPLES = [
    SFTExample("What is the capital of France?", "Paris."),
    SFTExample("Name a prime number greater than ten.", "Eleven is prime, and so is thirteen."),
    SFTExample("Say hello.", "Hello there, how are you today?"),
]
TOK = tiny_chat_tokenizer([t for ex in EXAMPLES for t in (ex.prompt, ex.response)])
ITEMS = [sft.tokenize(ex, TOK, 64) for ex in EXAMPLES]
PAD = TOK.pad_token_id


def model(seed: int = 0, prompt_len: int = 0):
    return tiny_task_model("llama", prompt_len=prompt_len, seed=seed, vocab_size=len(TOK),
                           max_position_embeddings=128, pad_token_id=PAD)


@pytest.mark.parametrize("prompt_len", [0, 3])
def test_scores_do_not_depend_on_batching_and_cover_the_response_only(prompt_len):
    m = model(prompt_len=prompt_len)
    batched = scoring.token_logprobs(m, ITEMS, PAD, batch_size=3)
    alone = scoring.token_logprobs(m, ITEMS, PAD, batch_size=1)
    for b, a, it in zip(batched, alone, ITEMS, strict=True):
        assert len(b) == it.response_tokens
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
        assert (b <= 0).all()


def test_the_mean_log_likelihood_is_minus_the_training_loss():
    m = model()
    for it, s in zip(ITEMS, scoring.sequence_loglik(m, ITEMS, PAD), strict=True):
        batch = sft.pad_batch([it], PAD)
        with torch.no_grad():
            loss = m.loss(m({"input_ids": batch["input_ids"]}), batch)
        assert s.tokens == it.response_tokens
        assert s.mean == pytest.approx(-float(loss), abs=1e-5)
        assert s.total == pytest.approx(s.mean * s.tokens, rel=1e-6)


def test_perplexity_is_the_exponentiated_mean_nll():
    m = model()
    scores = scoring.sequence_loglik(m, ITEMS, PAD)
    nll = -sum(s.total for s in scores) / sum(s.tokens for s in scores)
    ppl = scoring.perplexity(m, ITEMS, PAD)
    assert ppl == pytest.approx(math.exp(nll), rel=1e-6)
    assert 1.0 < ppl < 10 * len(TOK)  # a random model: near the vocabulary size, above 1


def test_kl_is_zero_to_itself_and_positive_to_another_model():
    p, q = model(seed=0), model(seed=1)
    assert abs(scoring.kl_divergence(p, p, ITEMS, PAD)) < 1e-6
    kl = scoring.kl_divergence(p, q, ITEMS, PAD)
    assert kl > 1e-3
    # the same KL, by hand, from each model's next-token log-probabilities at the scored positions
    want, n = 0.0, 0
    for it in ITEMS:
        batch = sft.pad_batch([it], PAD)
        with torch.no_grad():
            lp = torch.log_softmax(p({"input_ids": batch["input_ids"]})[0, :-1], -1)
            lq = torch.log_softmax(q({"input_ids": batch["input_ids"]})[0, :-1], -1)
        at = batch["labels"][0, 1:] != sft.IGNORE
        want += float((lp.exp() * (lp - lq)).sum(-1)[at].sum())
        n += int(at.sum())
    assert kl == pytest.approx(want / n, rel=1e-4)
