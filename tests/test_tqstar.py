"""Transfer Q*, ARGS and controlled decoding (fedft.decoding.tqstar, value_guided) on tiny random
models with a hand-made reward: the limits that reduce them to known decoders, the rollouts'
texts against plain greedy generation, and the cost counters."""

from __future__ import annotations

import pytest
import torch

from fedft.decoding import DECODERS
from fedft.decoding.tqstar import TQStar, TQStarOptions
from fedft.decoding.value_guided import ARGS, ARGSOptions, CDOptions, ControlledDecoding
from fedft.generation import GenerationConfig, generate
from fedft.model.tiny import tiny_chat_tokenizer, tiny_task_model

WORDS = "what is the capital of france ? say hello to me paris rome berlin madrid london match goal team"
TOK = tiny_chat_tokenizer([WORDS])
PROMPTS = [TOK(t, add_special_tokens=False)["input_ids"] for t in ("what is the capital of france ?", "say hello")]
CFG = GenerationConfig(max_new_tokens=6, eos_token_ids=(-1,))  # never ends early
VALUES = {w: ((7 * i) % 11) / 10 for i, w in enumerate(sorted(set(WORDS.split())))}


def reward(texts: list[str]) -> list[float]:
    """A hand-made reward: the sum of fixed per-word values (special tokens and unknowns 0)."""
    return [sum(VALUES.get(w, 0.0) for w in t.split()) for t in texts]


def other_reward(texts: list[str]) -> list[float]:
    return [t.count("paris") - 0.05 * len(t.split()) for t in texts]


def model(seed: int):
    return tiny_task_model("llama", seed=seed, vocab_size=len(TOK), max_position_embeddings=128,
                           pad_token_id=TOK.pad_token_id)


POLICY, BASELINE = model(0), model(1)
MODELS = {"policy": POLICY, "baseline": BASELINE}
GREEDY = generate(POLICY, TOK, PROMPTS, CFG).token_ids


def tqstar(**kw):
    return TQStar(TQStarOptions(**{"k": 3, "horizon": 2, **kw}), reward=reward, baseline_reward=other_reward)


@torch.no_grad()
def reward_ranked_greedy(prompt: list[int], k: int, steps: int) -> list[int]:
    """Reference, recomputing everything: among the policy's top-k, the token whose partial
    text has the highest reward (ties: the more probable)."""
    out: list[int] = []
    for _ in range(steps):
        logits = POLICY({"input_ids": torch.tensor([prompt + out])})[0, -1]
        logp, cand = torch.log_softmax(logits.float(), -1).topk(k)
        scores = reward([TOK.decode(out + [z], skip_special_tokens=True) for z in cand.tolist()])
        best = max(range(k), key=lambda j: (scores[j], float(logp[j])))
        out.append(int(cand[best]))
    return out


def test_horizon_0_and_a_large_alpha_pick_the_best_rewarded_candidate():
    got = tqstar(horizon=0, alpha=1e4).generate(MODELS, TOK, PROMPTS, CFG).token_ids
    assert got == [reward_ranked_greedy(list(p), 3, CFG.max_new_tokens) for p in PROMPTS]
    assert got != GREEDY  # the reward changed the decoding (else the test shows nothing)


@pytest.mark.parametrize("kw", [{"alpha": 0.0}, {"k": 1, "alpha": 5.0}, {"alpha": 0.0, "transfer": "indirect"},
                                {"k": 1, "alpha": 5.0, "candidate_source": "policy", "transfer": "indirect"}])
def test_alpha_0_or_k_1_is_greedy_policy_decoding(kw):
    assert tqstar(**kw).generate(MODELS, TOK, PROMPTS, CFG).token_ids == GREEDY


def test_a_positive_alpha_with_rollouts_changes_the_decoding():
    assert tqstar(alpha=5.0).generate(MODELS, TOK, PROMPTS, CFG).token_ids != GREEDY


@pytest.mark.parametrize("weights", ["normalised", "raw"])
def test_indirect_transfer_with_r_bl_equal_to_r_is_direct_transfer(weights):
    direct = tqstar(alpha=3.0).generate(MODELS, TOK, PROMPTS, CFG, keep_logits=True)
    same = TQStar(TQStarOptions(k=3, horizon=2, alpha=3.0, transfer="indirect", weights=weights), reward=reward,
                  baseline_reward=reward).generate(MODELS, TOK, PROMPTS, CFG, keep_logits=True)
    assert same.token_ids == direct.token_ids
    for a, b in zip(same.logits, direct.logits, strict=True):
        torch.testing.assert_close(a, b)
    other = tqstar(alpha=3.0, transfer="indirect", weights=weights).generate(MODELS, TOK, PROMPTS, CFG,
                                                                              keep_logits=True)
    assert not torch.allclose(other.logits[0], direct.logits[0])  # an r_BL != r does change the values


def test_args_with_w_0_is_greedy_and_args_is_tqstar_at_horizon_0():
    assert ARGS(ARGSOptions(k=3, w=0.0), reward=reward).generate({"policy": POLICY}, TOK, PROMPTS, CFG).token_ids == GREEDY
    args = ARGS(ARGSOptions(k=3, w=2.0), reward=reward).generate({"policy": POLICY}, TOK, PROMPTS, CFG).token_ids
    assert args == tqstar(horizon=0, alpha=2.0).generate(MODELS, TOK, PROMPTS, CFG).token_ids
    assert args != GREEDY


def test_cd_is_tqstar_with_the_policy_as_baseline():
    cd = ControlledDecoding(CDOptions(k=3, horizon=2, alpha=5.0), reward=reward)
    got = cd.generate({"policy": POLICY}, TOK, PROMPTS, CFG).token_ids
    assert got == tqstar(alpha=5.0).generate({"policy": POLICY, "baseline": POLICY}, TOK, PROMPTS, CFG).token_ids
    s, b, t = cd.last_stats, len(PROMPTS), CFG.max_new_tokens
    assert s.rollout_forwards == b * 3 * 2 * t  # rows x k x H x steps (no EOS)
    assert s.forwards == s.rollout_forwards + b * (t - 1)  # one model: no second cache to keep in step


def test_rollouts_continue_the_current_sequence_greedily_with_the_baseline():
    seen: list[list[str]] = []

    def recording(texts: list[str]) -> list[float]:
        seen.append(list(texts))
        return [0.0] * len(texts)

    steps, k, h = 3, 3, 4
    cfg = GenerationConfig(max_new_tokens=steps, eos_token_ids=(-1,))
    dec = TQStar(TQStarOptions(k=k, horizon=h, alpha=0.0), reward=recording)
    out = dec.generate(MODELS, TOK, PROMPTS, cfg).token_ids
    assert len(seen) == steps
    for row, prompt in enumerate(PROMPTS):
        so_far = out[row][: steps - 1]  # the last step's state: the prompt and two chosen tokens
        logits = POLICY({"input_ids": torch.tensor([list(prompt) + so_far])})[0, -1]
        cand = logits.topk(k).indices.tolist()
        for j, z in enumerate(cand):
            cont = generate(BASELINE, TOK, [list(prompt) + so_far + [z]],
                            GenerationConfig(max_new_tokens=h, eos_token_ids=(-1,))).token_ids[0]
            assert seen[-1][row * k + j] == TOK.decode(so_far + [z] + cont, skip_special_tokens=True)


def test_costs_are_counted_per_token():
    dec = tqstar(k=3, horizon=2, alpha=1.0, transfer="indirect")
    dec.generate(MODELS, TOK, PROMPTS, CFG)
    s, b, t = dec.last_stats, len(PROMPTS), CFG.max_new_tokens
    assert s.tokens == b * t
    assert s.rollout_forwards == b * 3 * 2 * t
    assert s.forwards == s.rollout_forwards + 2 * b * (t - 1)  # policy and baseline kept in step
    assert s.reward_texts == 2 * b * 3 * t  # r and r_BL of every candidate


def test_sampling_stays_in_the_top_k():
    cfg = GenerationConfig(max_new_tokens=6, temperature=1.0, seed=3, eos_token_ids=(-1,))
    gen = tqstar(k=3, alpha=2.0).generate(MODELS, TOK, PROMPTS, cfg, keep_logits=True)
    for t, logits in enumerate(gen.logits):
        assert (torch.isfinite(logits).sum(-1) == 3).all()
        for row in range(len(PROMPTS)):
            assert torch.isfinite(logits[row, gen.token_ids[row][t]])


def test_an_eos_candidate_ends_its_rollout_and_the_row():
    eos = TOK.convert_tokens_to_ids("paris")
    cfg = GenerationConfig(max_new_tokens=6, eos_token_ids=(eos,))
    dec = TQStar(TQStarOptions(k=4, horizon=3, alpha=50.0), reward=lambda ts: [-len(t.split()) for t in ts])
    gen = dec.generate(MODELS, TOK, PROMPTS, cfg)  # the shortest text wins: end as soon as EOS is a candidate
    for ids in gen.token_ids:
        assert eos not in ids[:-1]
    assert dec.last_stats.tokens == sum(len(ids) for ids in gen.token_ids)


def test_registered_with_their_roles_and_bad_settings_are_refused():
    assert DECODERS.get("tqstar") is TQStar and DECODERS.get("args") is ARGS
    assert DECODERS.get("cd") is ControlledDecoding
    assert TQStar.roles == ("policy", "baseline") and ARGS.roles == ("policy",)
    for bad in ({"k": 0}, {"transfer": "both"}, {"weights": "x"}, {"candidate_source": "ref"}, {"beta": 0.0}):
        with pytest.raises(ValueError):
            TQStarOptions(**bad)
    with pytest.raises(ValueError, match="needs a reward"):
        TQStar(TQStarOptions()).generate(MODELS, TOK, PROMPTS, CFG)
    with pytest.raises(ValueError, match="baseline_reward"):
        TQStar(TQStarOptions(transfer="indirect"), reward=reward).generate(MODELS, TOK, PROMPTS, CFG)
    with pytest.raises(ValueError, match="needs models"):
        tqstar().generate({"policy": POLICY}, TOK, PROMPTS, CFG)
