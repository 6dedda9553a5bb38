"""Decoding-time combination (fedft.decoding): the LogitCombiner interface and EFT."""

from __future__ import annotations

import pytest
import torch

from fedft.decoding import EFT, generate_combined
from fedft.generation import GenerationConfig, generate, left_pad, prefill
from fedft.model.tiny import tiny_chat_tokenizer, tiny_task_model

TOK = tiny_chat_tokenizer(["what is the capital of france ?", "say hello to me", "paris rome"])
PROMPTS = [TOK(t, add_special_tokens=False)["input_ids"] for t in ("what is the capital of france ?", "say hello")]
pytestmark = pytest.mark.usefixtures("_one_thread")
CFG = GenerationConfig(max_new_tokens=10, eos_token_ids=(-1,))


def model(seed: int, **kw):
    return tiny_task_model("llama", seed=seed, vocab_size=len(TOK), max_position_embeddings=128,
                           pad_token_id=TOK.pad_token_id, **kw)


def test_eft_with_base_equal_to_ref_decodes_as_the_fine_tuned_model():
    base, ft = model(0), model(1, num_hidden_layers=2)  # ref = base: base + (ft - ref) = ft
    got = generate_combined({"base": base, "ft": ft, "ref": base}, EFT(), TOK, PROMPTS, CFG, keep_logits=True)
    want = generate(ft, TOK, PROMPTS, CFG, keep_logits=True)
    assert got.token_ids == want.token_ids
    for a, b in zip(got.logits, want.logits, strict=True):
        torch.testing.assert_close(a, torch.log_softmax(b, -1), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_eft_is_the_base_when_the_delta_vanishes(lam):
    base, ft, ref = model(0), model(1), model(2)
    models = {"base": base, "ft": ft if lam == 0 else ref, "ref": ref}  # lam 0, or ft == ref
    got = generate_combined(models, EFT(lam=lam), TOK, PROMPTS, CFG)
    assert got.token_ids == generate(base, TOK, PROMPTS, CFG).token_ids


def test_one_step_is_the_per_token_rule():
    base, ft, ref = model(0), model(1), model(2)
    got = generate_combined({"base": base, "ft": ft, "ref": ref}, EFT(lam=0.5), TOK, PROMPTS,
                            GenerationConfig(max_new_tokens=1, eos_token_ids=(-1,)), keep_logits=True)
    ids, mask = left_pad(PROMPTS, TOK.pad_token_id)
    lp = {n: torch.log_softmax(prefill(m, ids, mask)[0], -1) for n, m in (("b", base), ("f", ft), ("r", ref))}
    want = torch.log_softmax(lp["b"] + 0.5 * (lp["f"] - lp["r"]), -1)
    torch.testing.assert_close(got.logits[0], want, atol=1e-5, rtol=1e-5)
    assert torch.allclose(got.logits[0].exp().sum(-1), torch.ones(2), atol=1e-5)  # normalised


def test_bad_model_sets_are_refused():
    with pytest.raises(ValueError, match="needs models"):
        generate_combined({"base": model(0)}, EFT(), TOK, PROMPTS, CFG)
    other = tiny_task_model("llama", vocab_size=len(TOK) + 5, max_position_embeddings=128)
    with pytest.raises(ValueError, match="vocabularies differ"):
        generate_combined({"base": model(0), "ft": other, "ref": model(1)}, EFT(), TOK, PROMPTS, CFG)
