"""Speculative sampling from a combined distribution (EFT up-scaling's speed-up), exact in distribution.

The paper (Mitchell et al., ICLR 2024, "An Emulator for Fine-Tuning Large Language Models using
Small Language Models", section on speculative decoding) speeds up up-scaling by drafting with the
small fine-tuned model: draft q = pi_ft^M, target p = the EFT distribution. Each round drafts
``gamma`` tokens from q, computes p at the gamma + 1 positions with one pass of the other models
over the block, accepts draft i with probability min(1, p_i(x_i) / q_i(x_i)), at the first
rejection samples from normalise(max(0, p_i - q_i)) and stops, and if every draft is accepted
samples a bonus token from p_{gamma+1} (Leviathan et al. 2023; Chen et al. 2023). The tokens are
distributed exactly as sampling from p token by token.

What fedft does: :func:`speculative_combined` runs this for any
:class:`~fedft.decoding.base.LogitCombiner` whose ``draft`` model is one of the combined ones (for
EFT: ``ft``). The draft model's own cache serves both drafting and its term of p; every other model
takes the round's block (the previous round's last token and the gamma drafts) in one
:func:`~fedft.generation.step_block` pass. Rows are batched: each row accepts its own number of
drafts, and the rejected tokens are masked out of every model's cache
(:func:`~fedft.generation.mask_positions`, a per-row crop). Temperature, top-k and top-p apply to
both p (after the combination) and q; greedy decoding (temperature 0) makes both one-hot, and the
result is then exactly the greedy combined decoding.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from fedft.decoding.base import LogitCombiner
from fedft.generation import (
    Generation,
    GenerationConfig,
    left_pad,
    mask_positions,
    prefill,
    sampling_probs,
    step,
    step_block,
)
from fedft.model.task import TaskModel
from fedft.precision import weight_cast_cache

GAMMA = 4  # [verify] draft tokens per round; the spec lists gamma in {2, 4, 8}


@dataclass
class SpeculativeGeneration(Generation):
    drafted: int = 0  # draft tokens proposed (to rows still generating)
    accepted: int = 0  # of which accepted
    rounds: int = 0  # draft-and-verify rounds (each one pass of every non-draft model)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else float("nan")


@contextmanager
def cast_weights(models: Iterable[TaskModel]) -> Iterator[None]:
    """Every model's weights cast to its compute dtype once for the block
    (:func:`fedft.precision.weight_cast_cache` for several models; under ``torch.no_grad``)."""
    with ExitStack() as stack:
        for m in models:
            stack.enter_context(weight_cast_cache(m))
        yield


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """normalise(max(0, p - q)) per row; p itself where that is empty (p == q: no rejection can
    happen there, only rounding)."""
    r = (p - q).clamp(min=0)
    total = r.sum(-1, keepdim=True)
    return torch.where(total > 0, r / total.clamp(min=1e-30), p)


def _accept(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, gen: torch.Generator
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: how many drafts are accepted (B,) and the next token (B,), from the target p
    (B, gamma + 1, V), the draft distributions q (B, gamma, V) and the drafts (B, gamma)."""
    b, gamma = drafts.shape
    px = p[:, :gamma].gather(-1, drafts[..., None])[..., 0]
    qx = q.gather(-1, drafts[..., None])[..., 0]
    u = torch.rand(b, gamma, generator=gen)
    ok = u * qx < px  # u < min(1, p/q); q(x) > 0 for a drawn x
    n = ok.long().cumprod(-1).sum(-1)  # accepted before the first rejection
    q_pad = torch.cat([q, torch.zeros_like(q[:, :1])], dim=1)  # q = 0 past the drafts: the bonus is from p
    at = n[:, None, None].expand(-1, 1, p.shape[-1])
    dist = residual(p.gather(1, at)[:, 0], q_pad.gather(1, at)[:, 0])
    return n, torch.multinomial(dist, 1, generator=gen)[:, 0]


class _Rows:
    """The emitted tokens of every row and when each row is done (EOS, stop string, length)."""

    def __init__(self, n: int, cfg: GenerationConfig, tokenizer: Any, eos: set[int]) -> None:
        self.out: list[list[int]] = [[] for _ in range(n)]
        self.done = [False] * n
        self.cfg, self.tokenizer, self.eos = cfg, tokenizer, eos

    def emit(self, i: int, tokens: list[int]) -> None:
        for t in tokens:
            if self.done[i]:
                return
            self.out[i].append(t)
            text = self.cfg.stop and self.tokenizer.decode(self.out[i])
            self.done[i] = (t in self.eos or len(self.out[i]) >= self.cfg.max_new_tokens
                            or bool(text and any(s in text for s in self.cfg.stop)))

    def texts(self) -> list[str]:
        texts = []
        for row in self.out:
            text = self.tokenizer.decode([t for t in row if t not in self.eos], skip_special_tokens=True)
            cut = min((text.find(s) for s in self.cfg.stop if s in text), default=-1)
            texts.append(text[:cut] if cut >= 0 else text)
        return texts


def _round(models: Mapping[str, TaskModel], combiner: LogitCombiner, draft: str, states: dict, cur: dict,
           pending: torch.Tensor | None, cfg: GenerationConfig, gamma: int, gen: torch.Generator
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One draft-and-verify round: (drafts (B, gamma), accepted counts (B,), next token (B,))."""
    lq = cur[draft] if pending is None else torch.log_softmax(step(models[draft], states[draft], pending), -1)
    drafted, qs, seq = [], [], {draft: [lq]}
    for _ in range(gamma):
        q = sampling_probs(lq, cfg)
        x = torch.multinomial(q, 1, generator=gen)[:, 0]
        drafted.append(x)
        qs.append(q)
        lq = torch.log_softmax(step(models[draft], states[draft], x), -1)
        seq[draft].append(lq)
    drafts = torch.stack(drafted, 1)
    block = drafts if pending is None else torch.cat([pending[:, None], drafts], 1)
    logps = {draft: torch.stack(seq[draft], 1)}  # (B, gamma + 1, V)
    for n in combiner.names:
        if n != draft:  # after a pending token the block's outputs are the gamma + 1 positions
            lp = torch.log_softmax(step_block(models[n], states[n], block), -1)
            logps[n] = lp if pending is not None else torch.cat([cur[n][:, None], lp], 1)
    b, k, v = logps[draft].shape
    p = sampling_probs(combiner({n: x.reshape(b * k, v) for n, x in logps.items()}), cfg).reshape(b, k, v)
    n_ok, nxt = _accept(p, torch.stack(qs, 1), drafts, gen)
    fed = block.shape[1]  # the same tokens went into every model's cache this round
    keep = torch.arange(fed)[None, :] < (fed - gamma + n_ok)[:, None]
    for n in combiner.names:
        mask_positions(states[n], keep)
    return drafts, n_ok, nxt


def speculative_combined(models: Mapping[str, TaskModel], combiner: LogitCombiner, draft: str, tokenizer: Any,
                         prompts: Sequence[Sequence[int]], cfg: GenerationConfig | None = None,
                         gamma: int = GAMMA) -> SpeculativeGeneration:
    """Sample from ``combiner`` over ``models`` by speculative sampling with ``models[draft]`` as
    the draft (``draft`` must be one of the combined models); exact in distribution."""
    cfg = cfg or GenerationConfig()
    if draft not in combiner.names:
        raise ValueError(f"the draft model {draft!r} must be one of the combined models {combiner.names}")
    if gamma < 1:
        raise ValueError(f"gamma must be >= 1, got {gamma}")
    eos = set(cfg.eos_token_ids or ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids, mask = left_pad(prompts, pad)
    gen = torch.Generator().manual_seed(cfg.seed)
    rows = _Rows(len(ids), cfg, tokenizer, eos)
    res = SpeculativeGeneration([], [])
    was = {n: m.training for n, m in models.items()}
    try:
        with torch.no_grad(), cast_weights(models[n] for n in combiner.names):
            states, cur = {}, {}
            for n in combiner.names:
                logits, states[n] = prefill(models[n].eval(), ids, mask)
                cur[n] = torch.log_softmax(logits, -1)
            pending = None
            while not all(rows.done):
                live = [not d for d in rows.done]
                drafts, n_ok, nxt = _round(models, combiner, draft, states, cur, pending, cfg, gamma, gen)
                for i in range(len(ids)):
                    if live[i]:
                        res.drafted, res.accepted = res.drafted + gamma, res.accepted + int(n_ok[i])
                        rows.emit(i, [*drafts[i, : int(n_ok[i])].tolist(), int(nxt[i])])
                res.rounds += 1
                pending = torch.where(torch.tensor(rows.done), torch.full_like(nxt, pad), nxt)
    finally:
        for n, m in models.items():
            m.train(was[n])
    res.texts, res.token_ids = rows.texts(), rows.out
    return res
