"""Transfer Q* (Chakraborty et al., "Transfer Q Star: Principled Decoding for LLM Alignment",
NeurIPS 2024, arXiv 2405.20495; code umd-huang-lab/Transfer-Q), and the value-guided decoding
engine that ARGS and controlled decoding (:mod:`fedft.decoding.value_guided`) share.

What the paper does. The KL-regularised optimal token policy is
π*(z | s) ∝ π_sft(z | s)·exp(α Q*(s, z)). TQ* estimates Q* with rollouts of an already aligned
baseline ρ_BL (a DPO model), which is trajectory-optimal for its own reward r_BL. At s_t = [x, y_<t]:

1. candidates Ẑ: the top-k tokens of π_sft(· | s_t) (``candidate_source="policy"`` [paper]); the
   authors' code takes candidates and their logits from the DPO model ("baseline" [code]);
2. each z in Ẑ is rolled out by ρ_BL from [s_t, z] for ``horizon`` tokens or to EOS, greedily
   [code] (the paper samples the rollout, to EOS);
3. value: direct transfer (r_BL = r) Q̂(z) = r(y_<t z τ_z); indirect transfer (r != r_BL)
   Q̂(z) = w_z·r with w_z = exp((r - r_BL)/β) on the same text (from ρ*_r ∝ ρ_sft e^{r/β} and
   ρ_BL ∝ ρ_sft e^{r_BL/β}). ``weights="normalised"``: w = k·softmax_z((r - r_BL)/β), the
   self-normalised weights, mean 1 over Ẑ [paper: normalisers ignored or self-normalised];
   ``"raw"``: exp((r - r_BL)/β) [code: exp(0.5 (r2 - r1)) r2, i.e. β = 2];
4. π_dec(z | s_t) ∝ π(z | s_t)·exp(α Q̂(z)) on Ẑ (0 elsewhere); greedy or sampled as the
   :class:`~fedft.generation.GenerationConfig` says; the chosen token is fed to every model.

What fedft does. The step-wise interface of :mod:`fedft.generation` (prefill / step / _pick), one
loop of its own so that it knows each row's end. The rollouts of every unfinished row's k
candidates run as one batch: the rollout model's KV cache, kept in step with the chosen tokens,
is forked row-wise (each row's cache repeated k times; :func:`fork`), then H greedy cached steps.
The code's score "raw logit + rm_weight × reward" equals "log-prob + α × reward": log-softmax only
subtracts a per-row constant, which neither the argmax nor the softmax over Ẑ sees; so there is no
logit / log-prob switch. A reward is a callable ``list[str] -> floats`` on the response text (the
prompt excluded, special tokens and EOS dropped): the paper's r(x, y) with x fixed per prompt.

Cost per generated token and sequence (``last_stats``): 1 forward of the candidate model, 1 of
ρ_BL (keeping its cache in step; none when it is the same model), about k·H rollout forwards,
and k reward evaluations (indirect: k of r and k of r_BL).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Literal

import torch

from fedft.decoding.base import DecodingMethod, register_decoder
from fedft.generation import DecodeState, Generation, GenerationConfig, _pick, left_pad, prefill, step
from fedft.model.task import TaskModel
from fedft.precision import weight_cast_cache

Reward = Callable[[list[str]], Sequence[float]]
#: the k candidates' texts of each unfinished row -> their values (R, k)
Value = Callable[[list[list[str]]], torch.Tensor]


@dataclass
class DecodeStats:
    """What a value-guided decode cost: LM forwards are token positions run through a model
    after the prefill (rows x steps, unfinished rows only), reward texts are texts scored."""

    tokens: int = 0  # generated tokens, all rows
    forwards: int = 0
    rollout_forwards: int = 0  # of ``forwards``
    reward_texts: int = 0
    seconds: float = 0.0

    def per_token(self) -> dict[str, float]:
        n = max(self.tokens, 1)
        return {"forwards_per_token": self.forwards / n, "rollout_forwards_per_token": self.rollout_forwards / n,
                "reward_texts_per_token": self.reward_texts / n, "tokens_per_s": self.tokens / max(self.seconds, 1e-9)}


def fork(state: DecodeState, rows: torch.Tensor) -> DecodeState:
    """A new decode state holding rows ``rows`` (indices, repeats allowed) of ``state``; ``state``
    itself is left as it was."""
    cache = copy.copy(state.cache)
    cache.layers = [copy.copy(layer) for layer in state.cache.layers]
    for layer in cache.layers:
        layer.batch_select_indices(rows)  # rebinds the copy's keys and values to new tensors
    return DecodeState(cache, state.mask[rows])


def rollout(model: TaskModel, state: DecodeState, rows: Sequence[int], cand: torch.Tensor, horizon: int,
            eos: set[int], pad: int, stats: DecodeStats) -> list[list[int]]:
    """Greedy continuations of ``horizon`` tokens from [row's sequence, z], for every row of
    ``rows`` and every candidate z of its row of ``cand`` (R, k): R·k token lists, row-major,
    each cut after EOS (empty when z is EOS)."""
    z = cand.reshape(-1)
    conts: list[list[int]] = [[] for _ in range(len(z))]
    if horizon < 1 or not len(z):
        return conts
    st = fork(state, torch.tensor(list(rows)).repeat_interleave(cand.shape[1]))
    done = torch.tensor([t in eos for t in z.tolist()])
    stats.forwards += int((~done).sum())
    stats.rollout_forwards += int((~done).sum())
    logits = step(model, st, z)
    for h in range(horizon):
        nxt = logits.argmax(-1)
        for i, t in enumerate(nxt.tolist()):
            if not done[i]:
                conts[i].append(t)
                done[i] = t in eos
        if bool(done.all()) or h == horizon - 1:
            break
        stats.forwards += int((~done).sum())
        stats.rollout_forwards += int((~done).sum())
        logits = step(model, st, torch.where(done, torch.full_like(nxt, pad), nxt))
    return conts


class _Run:
    """One value-guided decode: the candidate model's and the rollout model's states, each row's
    tokens so far and whether it has ended."""

    def __init__(self, prior: TaskModel, roll: TaskModel | None, tokenizer: Any, cfg: GenerationConfig,
                 k: int, horizon: int, alpha: float, value: Value, stats: DecodeStats) -> None:
        self.prior, self.roll, self.tok, self.cfg = prior, roll if horizon > 0 else None, tokenizer, cfg
        self.k, self.horizon, self.alpha, self.value, self.stats = k, horizon, alpha, value, stats
        eos_id = tokenizer.eos_token_id
        self.eos = set(cfg.eos_token_ids or ([eos_id] if eos_id is not None else []))
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.out: list[list[int]] = []
        self.done: list[bool] = []

    def start(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits, self.state = prefill(self.prior, ids, mask)
        self.rstate = self.state
        if self.roll is not None and self.roll is not self.prior:
            _, self.rstate = prefill(self.roll, ids, mask)
        self.out, self.done = [[] for _ in range(len(ids))], [False] * len(ids)
        return self.combine(logits)

    def advance(self, nxt: torch.Tensor) -> bool:
        """Record the picked tokens; True when every row has ended (as fedft.generation decides)."""
        for i, t in enumerate(nxt.tolist()):
            if not self.done[i]:
                self.out[i].append(t)
                self.stats.tokens += 1
                self.done[i] = t in self.eos or (bool(self.cfg.stop) and any(
                    s in self.tok.decode(self.out[i]) for s in self.cfg.stop))
        return all(self.done)

    def next(self, nxt: torch.Tensor) -> torch.Tensor:
        """Feed the picked tokens (finished rows get padding) and return the next decoding logits."""
        nxt = torch.where(torch.tensor(self.done), torch.full_like(nxt, self.pad), nxt)
        active = len(self.done) - sum(self.done)
        logits = step(self.prior, self.state, nxt)
        self.stats.forwards += active
        if self.rstate is not self.state:
            step(self.roll, self.rstate, nxt)
            self.stats.forwards += active
        return self.combine(logits)

    def text(self, ids: list[int]) -> str:
        return self.tok.decode([t for t in ids if t not in self.eos], skip_special_tokens=True)

    def combine(self, logits: torch.Tensor) -> torch.Tensor:
        """The decoding logits: log π(z) + α·Q̂(z) on each unfinished row's top-k, -inf elsewhere."""
        logp = torch.log_softmax(logits.float(), dim=-1)
        rows = [i for i, d in enumerate(self.done) if not d]
        if not rows:
            return logp
        prior, cand = logp[rows].topk(min(self.k, logp.shape[-1]), dim=-1)  # (R, k)
        conts = (rollout(self.roll, self.rstate, rows, cand, self.horizon, self.eos, self.pad, self.stats)
                 if self.roll is not None else [[] for _ in range(cand.numel())])
        zs = cand.tolist()
        texts = [[self.text([*self.out[r], z, *conts[a * cand.shape[1] + j]]) for j, z in enumerate(zs[a])]
                 for a, r in enumerate(rows)]
        q = self.value(texts).to(prior.dtype)
        dec = logp.clone()
        dec[rows] = torch.full_like(logp[rows], float("-inf")).scatter(-1, cand, prior + self.alpha * q)
        return dec


def value_guided_generate(prior: TaskModel, roll: TaskModel | None, tokenizer: Any, prompts: Sequence[Sequence[int]],
                          cfg: GenerationConfig | None, *, k: int, horizon: int, alpha: float, value: Value,
                          keep_logits: bool = False, stats: DecodeStats | None = None) -> Generation:
    """Decode ``prompts``: candidates and log π from ``prior``, values from ``value`` on texts
    extended by ``horizon``-token greedy rollouts of ``roll`` (none when ``horizon`` is 0).
    ``keep_logits`` keeps each step's decoding logits (B, V) (-inf outside the candidates)."""
    cfg = cfg or GenerationConfig()
    stats = stats if stats is not None else DecodeStats()
    run = _Run(prior, roll, tokenizer, cfg, k, horizon, alpha, value, stats)
    models = [m for m in dict.fromkeys([prior, run.roll]) if m is not None]
    was = [m.training for m in models]
    ids, mask = left_pad(prompts, run.pad)
    gen, kept, t0 = torch.Generator().manual_seed(cfg.seed), [], time.perf_counter()
    try:
        with torch.no_grad(), ExitStack() as stack:
            for m in models:
                stack.enter_context(weight_cast_cache(m.eval()))
            logits = run.start(ids, mask)
            for i in range(cfg.max_new_tokens):
                if keep_logits:
                    kept.append(logits)
                nxt = _pick(logits, cfg, gen)
                if run.advance(nxt) or i == cfg.max_new_tokens - 1:
                    break
                logits = run.next(nxt)
    finally:
        for m, w in zip(models, was, strict=True):
            m.train(w)
    stats.seconds += time.perf_counter() - t0
    texts = []
    for row in run.out:
        text = run.text(row)
        cut = min((text.find(s) for s in cfg.stop if s in text), default=-1)
        texts.append(text[:cut] if cut >= 0 else text)
    return Generation(texts, run.out, kept)


# --- values ----------------------------------------------------------------------------------------

def _scored(reward: Reward, texts: list[list[str]], stats: DecodeStats) -> torch.Tensor:
    flat = [t for row in texts for t in row]
    stats.reward_texts += len(flat)
    r = torch.tensor([float(x) for x in reward(flat)], dtype=torch.float32)
    if r.numel() != len(flat):
        raise ValueError(f"the reward returned {r.numel()} values for {len(flat)} texts")
    return r.view(len(texts), -1)


def direct_value(reward: Reward, stats: DecodeStats) -> Value:
    """Q̂ = r(text)."""
    return lambda texts: _scored(reward, texts, stats)


def indirect_value(reward: Reward, baseline_reward: Reward, beta: float, weights: str, stats: DecodeStats) -> Value:
    """Q̂ = w·r, w = exp((r - r_BL)/β): ``"normalised"`` over each row's candidates (k·softmax,
    mean 1), or ``"raw"``."""
    def value(texts: list[list[str]]) -> torch.Tensor:
        r, rb = _scored(reward, texts, stats), _scored(baseline_reward, texts, stats)
        d = (r - rb) / beta
        w = d.shape[-1] * torch.softmax(d, dim=-1) if weights == "normalised" else torch.exp(d)
        return w * r

    return value


# --- the plugins -----------------------------------------------------------------------------------

class RewardGuided(DecodingMethod):
    """Base of the value-guided decoders: built with the reward callables (not models of the
    plugin); each ``generate`` leaves its costs in ``last_stats``."""

    def __init__(self, options: Any = None, reward: Reward | None = None,
                 baseline_reward: Reward | None = None) -> None:
        super().__init__(options)
        self.reward, self.baseline_reward = reward, baseline_reward
        self.last_stats = DecodeStats()

    def _reward(self) -> Reward:
        if self.reward is None:
            raise ValueError(f"{self.name} needs a reward: {type(self).__name__}(options, reward=...)")
        return self.reward

    def _models(self, models: Mapping[str, TaskModel]) -> list[TaskModel]:
        missing = [r for r in self.roles if r not in models]
        if missing:
            raise ValueError(f"{self.name} needs models {missing}; got {sorted(models)}")
        sizes = {models[r].output_layer.out_features for r in self.roles}
        if len(sizes) != 1:
            raise ValueError(f"the models' vocabularies differ: {sorted(sizes)}")
        return [models[r] for r in self.roles]


Transfer = Literal["direct", "indirect"]
Weights = Literal["normalised", "raw"]
Source = Literal["policy", "baseline"]


@dataclass(frozen=True)
class TQStarOptions:
    k: int = 10  # [paper] candidates per step (top-k)
    horizon: int = 20  # [code] greedy rollout tokens (the code: 20 direct, 5 indirect; the paper: to EOS)
    alpha: float = 1.0  # [paper] weight of Q̂ (the code's rm_weight 1.0)
    beta: float = 2.0  # [code] indirect weight exp((r - r_BL)/beta): the code's exp(0.5 (r2 - r1))
    transfer: Transfer = "direct"  # [paper] direct: r_BL = r; indirect: importance-weighted by exp((r - r_BL)/beta)
    weights: Weights = "normalised"  # [paper] self-normalised over the k candidates; "raw" [code]
    candidate_source: Source = "policy"  # [paper] top-k and log-probs of pi_sft; "baseline" [code]: of rho_BL

    def __post_init__(self) -> None:
        if self.k < 1 or self.horizon < 0 or self.beta <= 0:
            raise ValueError(f"TQ* needs k >= 1, horizon >= 0, beta > 0; got {self.k}, {self.horizon}, {self.beta}")
        for name, value, valid in (("transfer", self.transfer, ("direct", "indirect")),
                                   ("weights", self.weights, ("normalised", "raw")),
                                   ("candidate_source", self.candidate_source, ("policy", "baseline"))):
            if value not in valid:
                raise ValueError(f"TQ* {name} {value!r}; valid: {', '.join(valid)}")


@register_decoder("tqstar", TQStarOptions)
class TQStar(RewardGuided):
    description = "Transfer Q*: top-k of the policy re-weighted by exp(alpha Q), Q from rollouts of an aligned baseline"
    roles = ("policy", "baseline")

    def generate(self, models: Mapping[str, TaskModel], tokenizer: Any, prompts: Sequence[Sequence[int]],
                 cfg: GenerationConfig | None = None, keep_logits: bool = False) -> Generation:
        o: TQStarOptions = self.options
        policy, baseline = self._models(models)
        self.last_stats = stats = DecodeStats()
        if o.transfer == "direct":
            value = direct_value(self._reward(), stats)
        elif self.baseline_reward is None:
            raise ValueError("indirect transfer needs baseline_reward (r_BL)")
        else:
            value = indirect_value(self._reward(), self.baseline_reward, o.beta, o.weights, stats)
        prior = policy if o.candidate_source == "policy" else baseline
        return value_guided_generate(prior, baseline, tokenizer, prompts, cfg, k=o.k, horizon=o.horizon,
                                     alpha=o.alpha, value=value, keep_logits=keep_logits, stats=stats)
