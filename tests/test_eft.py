"""EFT's sampling extras and speculative up-scaling (fedft.decoding.speculative): the multi-token
cached step, top-k / top-p after the combination, and exactness in distribution (chi-square)."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

import fedft.decoding.speculative as spec
from fedft.decoding import DECODERS, EFT, generate_combined
from fedft.decoding.speculative import speculative_combined
from fedft.generation import (
    GenerationConfig,
    left_pad,
    mask_positions,
    prefill,
    sampling_probs,
    step,
    step_block,
)
from fedft.model.tiny import tiny_chat_tokenizer, tiny_task_model

WORDS = "what is the capital of france ? say hello to me paris rome berlin yes no answer a b c"
TOK = tiny_chat_tokenizer([WORDS])
PROMPTS = [TOK(t, add_special_tokens=False)["input_ids"] for t in ("what is the capital of france ?", "say hello")]
pytestmark = pytest.mark.usefixtures("_one_thread")
NEVER = (-1,)  # no EOS: every row runs to max_new_tokens


def model(seed: int, **kw):
    return tiny_task_model("llama", seed=seed, vocab_size=len(TOK), max_position_embeddings=128,
                           pad_token_id=TOK.pad_token_id, **kw)


@pytest.fixture(scope="module")
def trio():
    return {"base": model(0), "ft": model(1, num_hidden_layers=2), "ref": model(2, num_hidden_layers=2)}


def test_a_block_step_is_token_by_token_steps():
    m = model(0)
    ids, mask = left_pad(PROMPTS, TOK.pad_token_id)
    block = torch.tensor([[7, 8, 9], [10, 11, 12]])
    _, one = prefill(m, ids, mask)
    want = torch.stack([step(m, one, block[:, i]) for i in range(3)], 1)
    _, many = prefill(m, ids, mask)
    got = step_block(m, many, block)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(step(m, many, block[:, 0]), step(m, one, block[:, 0]), atol=1e-5, rtol=1e-5)


def test_masked_positions_act_as_a_per_row_crop():
    """Feed 3 tokens, keep 1 in row 0 and all 3 in row 1, feed one more: the logits are those of
    the kept sequences prefilled from scratch."""
    m = model(0)
    ids, mask = left_pad(PROMPTS, TOK.pad_token_id)
    block, nxt = torch.tensor([[7, 8, 9], [10, 11, 12]]), torch.tensor([13, 14])
    _, state = prefill(m, ids, mask)
    step_block(m, state, block)
    mask_positions(state, torch.tensor([[True, False, False], [True, True, True]]))
    got = step(m, state, nxt)
    kept = [[*PROMPTS[0], 7, 13], [*PROMPTS[1], 10, 11, 12, 14]]
    for i, seq in enumerate(kept):
        want, _ = prefill(m, torch.tensor([seq]))
        torch.testing.assert_close(got[i], want[0], atol=1e-4, rtol=1e-4)


def test_top_k_and_top_p_filter_the_given_distribution():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    for cfg, want in ((GenerationConfig(temperature=1.0, top_k=2), [0.625, 0.375, 0, 0]),
                      (GenerationConfig(temperature=1.0, top_p=0.7), [0.625, 0.375, 0, 0]),
                      (GenerationConfig(temperature=1.0, top_k=3, top_p=0.9), [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0]),
                      (GenerationConfig(temperature=1.0), [0.5, 0.3, 0.15, 0.05]),
                      (GenerationConfig(), [1.0, 0, 0, 0])):
        torch.testing.assert_close(sampling_probs(logits, cfg)[0], torch.tensor(want), atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="top_k"):
        GenerationConfig(top_k=-1)


@pytest.mark.parametrize("kw", [{"top_k": 1}, {"top_p": 1e-6}])
def test_top_k_and_top_p_apply_after_the_combination(trio, kw):
    """Sampling with top-k 1 (or a tiny top-p) is greedy decoding of the combined distribution,
    not of any one model."""
    greedy = generate_combined(trio, EFT(lam=1.5), TOK, PROMPTS, GenerationConfig(max_new_tokens=8, eos_token_ids=NEVER))
    for seed in (0, 1):
        cfg = GenerationConfig(max_new_tokens=8, eos_token_ids=NEVER, temperature=1.0, seed=seed, **kw)
        assert generate_combined(trio, EFT(lam=1.5), TOK, PROMPTS, cfg).token_ids == greedy.token_ids
    plain = {n: generate_combined({"base": m, "ft": m, "ref": m}, EFT(), TOK, PROMPTS,
                                  GenerationConfig(max_new_tokens=8, eos_token_ids=NEVER)).token_ids
             for n, m in trio.items()}
    assert all(toks != greedy.token_ids for toks in plain.values())  # the combination changes the text


@pytest.mark.parametrize("gamma", [1, 3])
def test_greedy_speculative_decoding_is_greedy_eft(trio, gamma):
    cfg = GenerationConfig(max_new_tokens=9, eos_token_ids=NEVER)
    want = generate_combined(trio, EFT(lam=1.0), TOK, PROMPTS, cfg)
    got = speculative_combined(trio, EFT(lam=1.0), "ft", TOK, PROMPTS, cfg, gamma=gamma)
    assert got.token_ids == want.token_ids and got.texts == want.texts
    assert 0 <= got.accepted <= got.drafted and got.rounds >= 9 // (gamma + 1)
    eos = GenerationConfig(max_new_tokens=9, eos_token_ids=(want.token_ids[0][2],))  # row 0 ends at its 3rd token
    want = generate_combined(trio, EFT(lam=1.0), TOK, PROMPTS, eos)
    got = speculative_combined(trio, EFT(lam=1.0), "ft", TOK, PROMPTS, eos, gamma=gamma)
    assert got.token_ids == want.token_ids and len(got.token_ids[0]) <= 3


def _exact_marginals(trio, combiner, prompt: list[int], at: int) -> torch.Tensor:
    """P(token ``at`` = v) under token-by-token sampling from the combination (every prefix
    enumerated)."""
    v = len(TOK)
    prefixes, weights = [[]], torch.ones(1)
    for _ in range(at + 1):
        ids = torch.tensor([prompt + p for p in prefixes])
        probs = torch.softmax(combiner({n: torch.log_softmax(prefill(m, ids)[0], -1) for n, m in trio.items()}), -1)
        if len(prefixes[0]) == at:
            return (weights[:, None] * probs).sum(0)
        weights = (weights[:, None] * probs).reshape(-1)
        prefixes = [p + [t] for p in prefixes for t in range(v)]
    raise AssertionError


def _chi2(tokens: list[int], expected: torch.Tensor) -> float:
    """Chi-square p-value of the observed tokens against the expected distribution (bins with an
    expected count under 5 pooled)."""
    n = len(tokens)
    obs = torch.bincount(torch.tensor(tokens), minlength=len(expected)).double()
    exp = expected.double() * n / expected.sum()
    small = exp < 5
    f_obs = torch.cat([obs[~small], obs[small].sum()[None]]) if small.any() else obs
    f_exp = torch.cat([exp[~small], exp[small].sum()[None]]) if small.any() else exp
    return float(chisquare(f_obs.numpy(), f_exp.numpy() * f_obs.sum().item() / f_exp.sum().item()).pvalue)


N_SAMPLES = 4000


@pytest.fixture(scope="module")
def exact(trio):
    prompt = PROMPTS[0]
    return {at: _exact_marginals(trio, EFT(lam=1.0), prompt, at) for at in (0, 2)}


def _sample(trio, both_branches: bool = True) -> list[list[int]]:
    """N_SAMPLES speculative samples of 3 tokens (gamma 2) after the first prompt."""
    cfg = GenerationConfig(max_new_tokens=3, eos_token_ids=NEVER, temperature=1.0, seed=1234)
    out = speculative_combined(trio, EFT(lam=1.0), "ft", TOK, [PROMPTS[0]] * N_SAMPLES, cfg, gamma=2)
    assert not both_branches or 0 < out.accepted < out.drafted  # drafts were accepted and rejected
    return out.token_ids


def test_speculative_sampling_matches_the_combined_distribution(trio, exact):
    """First token and third token (which comes from a bonus or a second round), gamma 2."""
    rows = _sample(trio)
    direct = generate_combined(trio, EFT(lam=1.0), TOK, [PROMPTS[0]] * N_SAMPLES,
                               GenerationConfig(max_new_tokens=3, eos_token_ids=NEVER, temperature=1.0, seed=1234))
    for at in (0, 2):
        assert _chi2([r[at] for r in rows], exact[at]) > 1e-3
        assert _chi2([r[at] for r in direct.token_ids], exact[at]) > 1e-3  # the reference sampler passes too


@pytest.mark.parametrize("bug", ["resample from p on rejection", "accept every draft"])
def test_a_wrong_speculative_sampler_is_rejected(trio, exact, monkeypatch, bug):
    if bug == "accept every draft":
        monkeypatch.setattr(spec.torch, "rand", lambda *shape, generator=None: torch.zeros(*shape))
    else:
        monkeypatch.setattr(spec, "residual", lambda p, q: p)
    rows = _sample(trio, both_branches=bug != "accept every draft")
    assert min(_chi2([r[at] for r in rows], exact[at]) for at in (0, 2)) < 1e-3


def test_the_eft_plugin_runs_speculatively(trio):
    cfg = GenerationConfig(max_new_tokens=6, eos_token_ids=NEVER, temperature=1.0, seed=3)
    plain = DECODERS.get("eft")(DECODERS.get("eft").Options(lam=1.0)).generate(trio, TOK, PROMPTS, cfg)
    fast = DECODERS.get("eft")(DECODERS.get("eft").Options(lam=1.0, speculative=True, gamma=2)).generate(
        trio, TOK, PROMPTS, cfg)
    assert [len(t) for t in fast.token_ids] == [len(t) for t in plain.token_ids] == [6, 6]
    assert fast.drafted > 0 and 0 <= fast.acceptance_rate <= 1
    with pytest.raises(ValueError, match="gamma"):
        DECODERS.get("eft").Options(gamma=0)
    with pytest.raises(ValueError, match="draft model"):
        speculative_combined(trio, EFT(), "other", TOK, PROMPTS, cfg)


def test_the_study_judges(experiment_script):
    facts = experiment_script("llm_eft_facts")
    assert facts.knows("I think it is Bogotá.", ("Bogota",)) and facts.knows("Answer: Kiev.", ("Kyiv", "Kiev"))
    assert not facts.knows("Romania", ("Rome",)) and not facts.knows("", ("Paris",))
    assert facts.formatted(" Answer: Paris. ") and not facts.formatted("The capital is Paris.")
    assert not facts.formatted("Answer: Paris. It is big.") and not facts.formatted("Answer: Paris")
    for country, capitals in facts.CAPITALS.items():  # repeating the question never counts as knowing
        assert not facts.knows(facts.QUESTION.format(country=country), capitals), country
