"""Data selectors (fedft.selection): GRAPE picks what the target model finds most probable."""

from __future__ import annotations

import pytest

from fedft.data import sft
from fedft.data.sft import SFTExample
from fedft.model.tiny import tiny_chat_tokenizer, tiny_task_model
from fedft.scoring import sequence_loglik
from fedft.selection import GRAPE, RandomSelector

CANDIDATES = [
    SFTExample("what is two plus two ?", "four"),
    SFTExample("what is two plus two ?", "the answer is four , of course"),
    SFTExample("what is two plus two ?", "two plus two makes four"),
    SFTExample("name a colour .", "red"),
    SFTExample("name a colour .", "blue is a colour"),
    SFTExample("say hello .", "hello"),
]
TOK = tiny_chat_tokenizer([t for ex in CANDIDATES for t in (ex.prompt, ex.response)])


def target():
    return tiny_task_model("llama", seed=0, vocab_size=len(TOK), max_position_embeddings=128,
                           pad_token_id=TOK.pad_token_id)


def test_grape_keeps_the_most_probable_candidates_per_prompt():
    m = target()
    items = [sft.tokenize(ex, TOK, 64) for ex in CANDIDATES]
    means = [s.mean for s in sequence_loglik(m, items, TOK.pad_token_id)]
    groups = {"what is two plus two ?": [0, 1, 2], "name a colour .": [3, 4], "say hello .": [5]}
    for top_n in (1, 2):
        want = sorted(i for idx in groups.values() for i in sorted(idx, key=lambda i: -means[i])[:top_n])
        assert GRAPE(m, TOK, top_n=top_n).select(CANDIDATES) == want
    assert GRAPE(m, TOK).scores(CANDIDATES) == pytest.approx(means)
    # a prompt with one candidate always keeps it; the result is in input order
    assert 5 in GRAPE(m, TOK).select(CANDIDATES)
    with pytest.raises(ValueError, match="top_n"):
        GRAPE(m, TOK, top_n=0).select(CANDIDATES)


def test_random_selector_is_seeded_and_sized():
    a = RandomSelector(n=3, seed=1).select(CANDIDATES)
    assert a == RandomSelector(n=3, seed=1).select(CANDIDATES) and len(a) == 3 and a == sorted(a)
    assert RandomSelector(n=3, seed=2).select(CANDIDATES) != a or RandomSelector(n=3, seed=3).select(CANDIDATES) != a
    assert len(RandomSelector(fraction=0.5).select(CANDIDATES)) == 3
    assert RandomSelector(n=100).select(CANDIDATES) == list(range(6))
    assert RandomSelector(seed=1).select(CANDIDATES, budget=2) == RandomSelector(n=2, seed=1).select(CANDIDATES)
    assert RandomSelector().select(CANDIDATES) == list(range(6))
    with pytest.raises(ValueError, match="at most one"):
        RandomSelector(n=1, fraction=0.5)


def test_el2n_selector_keeps_the_hardest_examples_and_matches_the_split_step_score():
    import torch

    from fedft.data.sft import pad_batch
    from fedft.scoring import el2n
    from fedft.selection import EL2N
    from fedft.split.step import lm_el2n

    m = target()
    items = [sft.tokenize(ex, TOK, 64) for ex in CANDIDATES]
    scores = el2n(m, items, TOK.pad_token_id, batch_size=2)
    batch = pad_batch(items, TOK.pad_token_id)
    with torch.no_grad():
        ref = lm_el2n(m({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}), batch["labels"])
    assert scores == pytest.approx(ref.tolist(), abs=1e-4)
    assert all(0 <= s <= 2 ** 0.5 for s in scores)
    top = sorted(sorted(range(6), key=lambda i: -scores[i])[:2])
    assert EL2N(m, TOK).select(CANDIDATES, budget=2) == top
    assert EL2N(m, TOK).select(CANDIDATES) == list(range(6))
