"""Generation (fedft.generation): the KV-cached path against full recomputation, with soft
prompts and LoRA applied, left padding, sampling seeds, stop strings and EOS."""

from __future__ import annotations

import pytest
import torch

from fedft.config import MethodConfig
from fedft.generation import GenerationConfig, generate, generate_uncached, left_pad, prefill, step
from fedft.methods import METHODS
from fedft.model.tiny import tiny_chat_tokenizer, tiny_task_model

TEXTS = ["what is the capital of france ?", "paris is the capital .", "say hello to me", "hello there friend"]
TOK = tiny_chat_tokenizer(TEXTS)
PROMPTS = [TOK(t, add_special_tokens=False)["input_ids"] for t in ("what is the capital of france ?", "say hello")]


def model(prompt_len: int = 0, deep: bool = False, method: str | None = None, seed: int = 0):
    m = tiny_task_model("llama", prompt_len=prompt_len, deep_prompts=deep, seed=seed, vocab_size=len(TOK),
                        max_position_embeddings=128, pad_token_id=TOK.pad_token_id)
    if method:
        METHODS.get(method)(MethodConfig(name=method)).apply(m)
        torch.manual_seed(seed + 1)
        with torch.no_grad():  # trained-looking adapters: nonzero LoRA B
            for n, p in m.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.2)
    if prompt_len:
        with torch.no_grad():  # prompts as large as the token embeddings, so they matter
            m.prompt.prompt_embeddings.normal_(0, 1.0)
    return m.eval()


@pytest.mark.parametrize("prompt_len, deep, method", [(0, False, None), (3, False, None), (3, True, None),
                                                      (0, False, "lora")])
def test_cached_generation_equals_recomputing_everything(prompt_len, deep, method):
    m = model(prompt_len, deep, method)
    cfg = GenerationConfig(max_new_tokens=12, eos_token_ids=(-1,))  # never stops early
    cached = generate(m, TOK, PROMPTS, cfg, keep_logits=True)
    full = generate_uncached(m, TOK, PROMPTS, cfg, keep_logits=True)
    assert cached.token_ids == full.token_ids and all(len(r) == 12 for r in cached.token_ids)
    for a, b in zip(cached.logits, full.logits, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_a_prompt_decodes_the_same_alone_and_left_padded_in_a_batch():
    m = model(prompt_len=3)
    cfg = GenerationConfig(max_new_tokens=10, eos_token_ids=(-1,))
    batch = generate(m, TOK, PROMPTS, cfg, keep_logits=True)
    for i, p in enumerate(PROMPTS):
        alone = generate(m, TOK, [p], cfg, keep_logits=True)
        assert alone.token_ids[0] == batch.token_ids[i]
        for a, b in zip(alone.logits, batch.logits, strict=True):
            torch.testing.assert_close(a[0], b[i], atol=1e-4, rtol=1e-4)


def test_sampling_is_seeded_and_the_same_with_and_without_the_cache():
    m = model()
    cfg = GenerationConfig(max_new_tokens=15, temperature=1.5, top_p=0.9, seed=7, eos_token_ids=(-1,))
    a, b = generate(m, TOK, PROMPTS, cfg), generate(m, TOK, PROMPTS, cfg)
    assert a.token_ids == b.token_ids == generate_uncached(m, TOK, PROMPTS, cfg).token_ids
    other = generate(m, TOK, PROMPTS, GenerationConfig(max_new_tokens=15, temperature=1.5, seed=8, eos_token_ids=(-1,)))
    assert other.token_ids != a.token_ids
    greedy = generate(m, TOK, PROMPTS, GenerationConfig(max_new_tokens=15, eos_token_ids=(-1,)))
    assert greedy.token_ids != a.token_ids  # temperature 1.5 on a random model leaves the argmax path


def test_eos_and_stop_strings_end_a_row_and_are_cut_from_the_text():
    m = model()
    sampled = {"max_new_tokens": 8, "temperature": 1.5, "seed": 3}  # varied tokens, reproducibly
    free = generate(m, TOK, PROMPTS, GenerationConfig(**sampled, eos_token_ids=(-1,)))
    row = free.token_ids[0]
    first = row[0]
    ended = generate(m, TOK, PROMPTS, GenerationConfig(**sampled, eos_token_ids=(first,)))
    assert ended.token_ids[0] == [first] and ended.texts[0] == ""
    # a stop string first seen at step j ends the row after j + 1 tokens and is cut from the text
    j = next(j for j in range(1, len(row)) if TOK.decode([row[j]]) not in TOK.decode(row[:j]))
    stop_word = TOK.decode([row[j]])
    stopped = generate(m, TOK, PROMPTS, GenerationConfig(**sampled, eos_token_ids=(-1,), stop=(stop_word,)))
    assert stopped.token_ids[0] == row[: j + 1] and stop_word not in stopped.texts[0]
    assert free.texts[0].startswith(stopped.texts[0])


def test_the_stepwise_interface_and_bad_input():
    m = model()
    ids, mask = left_pad(PROMPTS, TOK.pad_token_id)
    logits, state = prefill(m, ids, mask)
    assert logits.shape == (2, len(TOK)) and state.mask.shape == ids.shape
    nxt = step(m, state, logits.argmax(-1))
    assert nxt.shape == (2, len(TOK)) and state.mask.shape == (2, ids.shape[1] + 1)
    with pytest.raises(ValueError, match="at least one token"):
        left_pad([[1], []], 0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationConfig(max_new_tokens=0)
    with pytest.raises(ValueError, match="causal-LM"):
        generate(tiny_task_model("bert"), TOK, PROMPTS)


def test_generate_command_refuses_bad_input_with_one_line(capsys, tmp_path):
    from fedft.cli import main

    assert main(["generate", "--prompt", "hi"]) == 2
    assert "either --model NAME or a RUN_DIR" in capsys.readouterr().err
    assert main(["generate", "--model", "tiny-llama", "--prompt", "hi"]) == 2
    assert "no real tokenizer" in capsys.readouterr().err
    assert main(["generate", str(tmp_path), "--prompt", "hi"]) == 1
    err = capsys.readouterr().err
    assert "not a fedft run directory" in err and len(err.strip().splitlines()) == 1
