"""SFT data (fedft.data.sft): response-only labels, the chat template, truncation, padding,
packing isolation on a tiny random Llama, and the tokenisation cache."""

from __future__ import annotations

import random

import pytest
import torch

from fedft.data import sft
from fedft.data.sft import IGNORE, SFTExample
from fedft.model.tiny import backbone_from_config, tiny_chat_tokenizer, tiny_config

EXAMPLES = [
    SFTExample("What is the capital of France?", "Paris.", group="en/geo"),
    SFTExample("Quelle est la capitale de l'Italie ?", "Rome.", group="fr/geo"),
    SFTExample("Name a prime number greater than ten.", "Eleven is prime, and so is thirteen.", task="math"),
    SFTExample("Say hello.", "Hello there, how are you today?", group="en/chat"),
]
TOK = tiny_chat_tokenizer([t for ex in EXAMPLES for t in (ex.prompt, ex.response)] + ["be brief"])


def test_only_the_response_and_its_end_of_turn_are_labelled():
    for ex in EXAMPLES:
        it = sft.tokenize(ex, TOK, max_length=64)
        prompt, response = sft.render(ex, TOK)
        assert it.input_ids == prompt + response
        assert it.labels[: len(prompt)] == [IGNORE] * len(prompt)
        assert it.labels[len(prompt):] == response
        labelled = [t for t in it.labels if t != IGNORE]
        assert TOK.decode(labelled[:-1]) == TOK.decode(TOK(ex.response, add_special_tokens=False)["input_ids"])
        assert labelled[-1] == TOK.convert_tokens_to_ids("<|im_end|>")
        assert it.task == ex.task


def test_the_system_prompt_is_off_unless_given():
    ex = EXAMPLES[0]
    system_id = TOK.convert_tokens_to_ids("system")
    assert system_id not in sft.tokenize(ex, TOK, 64).input_ids
    with_system = sft.tokenize(ex, TOK, 64, system="Be brief.")
    assert system_id in with_system.input_ids
    assert with_system.response_tokens == sft.tokenize(ex, TOK, 64).response_tokens


def test_a_tokenizer_without_template_gets_prompt_newline_response_eos():
    plain = tiny_chat_tokenizer([EXAMPLES[0].prompt, EXAMPLES[0].response], chat_template=None)
    it = sft.tokenize(EXAMPLES[0], plain, 64)
    assert [t for t in it.labels if t != IGNORE][-1] == plain.eos_token_id
    with pytest.raises(ValueError, match="system prompt"):
        sft.tokenize(EXAMPLES[0], plain, 64, system="Be brief.")


def test_an_over_long_prompt_loses_its_left_end_and_keeps_the_response():
    ex = SFTExample("say hello " * 30 + "What is the capital of France?", "Paris.")
    full = sft.tokenize(ex, TOK, 1000)
    cut = sft.tokenize(ex, TOK, 20)
    assert len(cut) == 20
    assert cut.input_ids == full.input_ids[-20:]  # the left end went, header and response stayed
    assert cut.labels == full.labels[-20:] and cut.response_tokens == full.response_tokens
    tiny = sft.tokenize(ex, TOK, 4, min_prompt=8)  # shorter than min_prompt: the response is cut too
    assert len(tiny) == 4 and tiny.response_tokens >= 1


def test_padding_masks_labels_and_attention():
    items = [sft.tokenize(ex, TOK, 64) for ex in EXAMPLES]
    b = sft.pad_batch(items, TOK.pad_token_id)
    lengths = [len(it) for it in items]
    assert b["input_ids"].shape == (4, max(lengths))
    assert b["attention_mask"].sum(1).tolist() == lengths
    assert (b["labels"][b["attention_mask"] == 0] == IGNORE).all()
    for i, it in enumerate(items):
        assert b["labels"][i, : len(it)].tolist() == it.labels


def test_packing_puts_each_example_once_and_restarts_positions():
    rng = random.Random(0)
    for _ in range(50):
        items = [sft.TokenizedExample(list(range(1, n + 1)), [IGNORE] + list(range(2, n + 1)))
                 for n in (rng.randint(1, 16) for _ in range(rng.randint(1, 12)))]
        p = sft.pack(items, 16, pad_id=0)
        seen = []
        for row in range(p["input_ids"].shape[0]):
            seg = p["segment_ids"][row]
            assert int((seg > 0).sum()) <= 16
            for s in seg[seg > 0].unique().tolist():
                at = seg == s
                assert p["position_ids"][row, at].tolist() == list(range(int(at.sum())))
                seen.append(p["input_ids"][row, at].tolist())
        assert sorted(seen) == sorted(it.input_ids for it in items)
    with pytest.raises(ValueError, match="max_length"):
        sft.pack([sft.TokenizedExample([1] * 5, [1] * 5)], 4, pad_id=0)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_a_packed_example_has_the_logits_it_has_alone(attention):
    torch.manual_seed(0)
    model = backbone_from_config(tiny_config("llama", vocab_size=len(TOK), max_position_embeddings=128),
                                 "causal_lm").eval()
    model.set_attn_implementation(attention)
    items = [sft.tokenize(ex, TOK, 40) for ex in EXAMPLES]
    p = sft.pack(items, 40, TOK.pad_token_id)
    assert p["input_ids"].shape[0] < len(items)  # something was packed together
    with torch.no_grad():
        packed = model(input_ids=p["input_ids"], position_ids=p["position_ids"],
                       attention_mask=sft.packed_attention_mask(p["segment_ids"])).logits
        for it in items:
            alone = model(input_ids=torch.tensor([it.input_ids])).logits[0]
            row, s = next((r, int(s)) for r in range(p["input_ids"].shape[0])
                          for s in p["segment_ids"][r].unique() if s > 0
                          and p["input_ids"][r, p["segment_ids"][r] == s].tolist() == it.input_ids)
            torch.testing.assert_close(packed[row, p["segment_ids"][row] == s], alone, atol=1e-4, rtol=1e-4)
    # without the block mask the later examples of a row would see the earlier ones
    with torch.no_grad():
        leaky = model(input_ids=p["input_ids"], position_ids=p["position_ids"],
                      attention_mask=p["attention_mask"]).logits
    assert not torch.allclose(leaky, packed, atol=1e-3)


def test_the_cache_is_keyed_by_tokenizer_settings_and_content(tmp_path, monkeypatch):
    first = sft.tokenize_cached(EXAMPLES, TOK, 64, tmp_path)
    assert first == [sft.tokenize(ex, TOK, 64) for ex in EXAMPLES]
    monkeypatch.setattr(sft, "tokenize", lambda *a, **k: pytest.fail("tokenised again"))
    assert sft.tokenize_cached(EXAMPLES, TOK, 64, tmp_path) == first  # read back, not recomputed
    monkeypatch.undo()
    other = tiny_chat_tokenizer([t for ex in EXAMPLES for t in (ex.prompt, ex.response)])
    other.chat_template = other.chat_template.replace("<|im_start|>assistant", "<|im_start|>assistant ")
    keys = {sft.cache_key(EXAMPLES, TOK, 64, None, 8), sft.cache_key(EXAMPLES, TOK, 32, None, 8),
            sft.cache_key(EXAMPLES[:3], TOK, 64, None, 8), sft.cache_key(EXAMPLES, TOK, 64, "Be brief.", 8),
            sft.cache_key(EXAMPLES, other, 64, None, 8)}
    assert len(keys) == 5
    assert len(list(tmp_path.glob("sft-*.json"))) == 1
