"""Text generation for causal-LM :class:`~fedft.model.task.TaskModel`: batched, left-padded,
seeded greedy or sampling decoding with a KV cache.

It works on the model with any method applied. LoRA and IA3 are in the modules. Shallow and
deep soft prompts are spliced into the prefill exactly as in ``TaskModel.forward``. Split parts
work when composed into one model.

The step-wise interface is what decoding-time methods (EFT, Transfer Q*) build on:

    logits, state = prefill(model, input_ids, attention_mask)   # (B, V) next-token logits
    logits = step(model, state, next_ids)                       # one cached step, (B, V)
    logits = step_block(model, state, block_ids)                # N tokens in one pass, (B, N, V)

:func:`step_block` feeds several tokens per row in one cached pass (speculative decoding verifies a
drafted block with it); :func:`mask_positions` then drops rejected tokens from the state (their
cache entries stay but are masked out, so later positions continue as if they were never fed).

:func:`generate` drives it. :func:`generate_uncached` recomputes the whole sequence at every
step; it is the reference the cached path is tested against (same tokens, same logits).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache
from transformers.masking_utils import create_causal_mask

from fedft.model.arch import CACHE_KW as _CACHE_KW
from fedft.model.arch import llama_positions
from fedft.model.task import TaskModel
from fedft.precision import weight_cast_cache


@dataclass
class DecodeState:
    """What a cached decoding step needs: the KV cache and the (B, L) mask of everything seen
    (prompts and left padding included)."""

    cache: Any
    mask: torch.Tensor


def _check(model: TaskModel) -> None:
    if model.task != "causal_lm" or model.arch.modality != "text":
        raise ValueError("generation needs a causal-LM TaskModel (model.task = 'causal_lm')")


def _run(model: TaskModel, h: torch.Tensor, state: DecodeState, replace: Callable | None = None) -> torch.Tensor:
    """The blocks on the new positions ``h`` (B, N, D) against the cache; updates the cache."""
    backbone, new = model.backbone, h.shape[1]
    pos = llama_positions(state.mask, state.mask)[:, -new:]  # (B, N): positions continue past padding
    dtype = h.dtype
    with model.compute():
        causal = create_causal_mask(config=backbone.config, inputs_embeds=h, attention_mask=state.mask,
                                    position_ids=pos, **{_CACHE_KW: state.cache})
        rope = backbone.rotary_emb(h, position_ids=pos)
        for i, block in enumerate(model.blocks):
            if replace is not None:
                h = replace(h, i)
            h = block(h, attention_mask=causal, position_embeddings=rope, position_ids=pos, use_cache=True,
                      **{_CACHE_KW: state.cache})
    return h.to(dtype)


def _last_logits(model: TaskModel, h: torch.Tensor) -> torch.Tensor:
    """Final norm and LM head on the last position: (B, V) float32."""
    with model.compute():
        return model.output_layer(model.arch.finish(model.backbone, h[:, -1:]))[:, -1].float()


@torch.no_grad()
def prefill(model: TaskModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, DecodeState]:
    """Run the (left-padded) prompts through the model; return the next-token logits (B, V)
    and the state for :func:`step`."""
    _check(model)
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    h, full = model.embed({"input_ids": input_ids, "attention_mask": mask})
    state = DecodeState(DynamicCache(config=model.backbone.config), full.bool())
    replace = None
    p = model.prompt
    if p is not None and p.deep_layers:
        at = model.arch.prompt_index

        def replace(x: torch.Tensor, i: int) -> torch.Tensor:
            return p.replace(x, i - 1, at) if 0 < i <= p.deep_layers else x

    return _last_logits(model, _run(model, h, state, replace)), state


@torch.no_grad()
def step(model: TaskModel, state: DecodeState, next_ids: torch.Tensor) -> torch.Tensor:
    """Feed one token per row (B,) and return the next-token logits (B, V); updates ``state``."""
    h = model.arch.embedding_module(model.backbone)(next_ids[:, None])  # (B, 1, D)
    state.mask = torch.cat([state.mask, torch.ones_like(state.mask[:, :1])], dim=1)
    return _last_logits(model, _run(model, h, state))


@torch.no_grad()
def step_block(model: TaskModel, state: DecodeState, ids: torch.Tensor) -> torch.Tensor:
    """Feed N tokens per row (B, N) in one cached pass; return the next-token logits after each
    of them (B, N, V), as N calls of :func:`step` would; updates ``state``."""
    h = model.arch.embedding_module(model.backbone)(ids)  # (B, N, D)
    state.mask = torch.cat([state.mask, torch.ones_like(ids, dtype=torch.bool)], dim=1)
    h = _run(model, h, state)
    with model.compute():
        return model.output_layer(model.arch.finish(model.backbone, h)).float()


def mask_positions(state: DecodeState, keep: torch.Tensor) -> None:
    """Keep only the last N fed tokens where ``keep`` (B, N) is true: the others stay in the
    cache but are masked out of attention and positions (a per-row ``DynamicCache.crop``)."""
    n = keep.shape[1]
    state.mask = torch.cat([state.mask[:, :-n], state.mask[:, -n:] & keep.bool()], dim=1)


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()  # stop strings; the completion ends before the first one
    eos_token_ids: tuple[int, ...] = ()  # tokens that end a row (the tokenizer's EOS by default)
    top_k: int = 0  # keep the k most likely tokens before top_p; 0: all

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError(f"need temperature >= 0, 0 < top_p <= 1 and top_k >= 0, got {self.temperature}, "
                             f"{self.top_p}, {self.top_k}")


@dataclass
class Generation:
    texts: list[str]  # completions, cut before any stop string, without EOS
    token_ids: list[list[int]]  # the generated ids of each row (up to and including its EOS)
    logits: list[torch.Tensor] = field(default_factory=list)  # per step, (B, V), when kept


def sampling_probs(logits: torch.Tensor, cfg: GenerationConfig) -> torch.Tensor:
    """The (..., V) distribution a step samples from: softmax at the temperature, then top-k, then
    top-p (each renormalised); one-hot at the argmax when greedy (temperature 0)."""
    if cfg.temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
    probs = torch.softmax(logits / cfg.temperature, dim=-1)
    if 0 < cfg.top_k < probs.shape[-1]:
        top = probs.topk(cfg.top_k, dim=-1)
        probs = torch.zeros_like(probs).scatter(-1, top.indices, top.values)
        probs = probs / probs.sum(-1, keepdim=True)
    if cfg.top_p < 1:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > cfg.top_p  # keep the smallest set reaching top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def _pick(logits: torch.Tensor, cfg: GenerationConfig, gen: torch.Generator) -> torch.Tensor:
    if cfg.temperature == 0:
        return logits.argmax(-1)
    return torch.multinomial(sampling_probs(logits, cfg), 1, generator=gen)[:, 0]


def left_pad(ids: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts as a left-padded (B, T) batch and its mask."""
    if not ids or any(len(x) == 0 for x in ids):
        raise ValueError("every prompt needs at least one token")
    n = max(len(x) for x in ids)
    out = torch.full((len(ids), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), n), dtype=torch.long)
    for i, x in enumerate(ids):
        out[i, n - len(x):] = torch.tensor(list(x))
        mask[i, n - len(x):] = 1
    return out, mask


def _decode(model: TaskModel, tokenizer: Any, prompts: Sequence[Sequence[int]], cfg: GenerationConfig,
            next_logits: Callable, keep_logits: bool) -> Generation:
    _check(model)
    eos = set(cfg.eos_token_ids or ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids, mask = left_pad(prompts, pad)
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), weight_cast_cache(model):  # each weight cast to bf16 once per call
            return _decode_loop(model, tokenizer, ids, mask, cfg, next_logits, keep_logits, eos, pad)
    finally:
        model.train(was)


def _decode_loop(model: TaskModel, tokenizer: Any, ids: torch.Tensor, mask: torch.Tensor, cfg: GenerationConfig,
                 next_logits: Callable, keep_logits: bool, eos: set[int], pad: int) -> Generation:
    gen = torch.Generator().manual_seed(cfg.seed)
    out: list[list[int]] = [[] for _ in range(len(ids))]
    done = [False] * len(ids)
    kept: list[torch.Tensor] = []
    logits = next_logits(ids, mask, None)
    for _ in range(cfg.max_new_tokens):
        if keep_logits:
            kept.append(logits)
        nxt = _pick(logits, cfg, gen)
        for i, t in enumerate(nxt.tolist()):
            if not done[i]:
                out[i].append(t)
                done[i] = t in eos or (bool(cfg.stop) and any(s in tokenizer.decode(out[i]) for s in cfg.stop))
        if all(done):
            break
        nxt = torch.where(torch.tensor(done), torch.full_like(nxt, pad), nxt)  # finished rows idle
        logits = next_logits(ids, mask, nxt)
    texts = []
    for row in out:
        text = tokenizer.decode([t for t in row if t not in eos], skip_special_tokens=True)
        cut = min((text.find(s) for s in cfg.stop if s in text), default=-1)
        texts.append(text[:cut] if cut >= 0 else text)
    return Generation(texts, out, kept)


def generate(model: TaskModel, tokenizer: Any, prompts: Sequence[Sequence[int]],
             cfg: GenerationConfig | None = None, keep_logits: bool = False) -> Generation:
    """Complete each prompt (token ids) with the KV cache."""
    cfg = cfg or GenerationConfig()
    state: list[DecodeState] = []

    def next_logits(ids: torch.Tensor, mask: torch.Tensor, nxt: torch.Tensor | None) -> torch.Tensor:
        if nxt is None:
            logits, s = prefill(model, ids, mask)
            state.append(s)
            return logits
        return step(model, state[0], nxt)

    return _decode(model, tokenizer, prompts, cfg, next_logits, keep_logits)


def generate_batched(model: TaskModel, tokenizer: Any, prompts: Sequence[Sequence[int]],
                     cfg: GenerationConfig | None = None, batch_size: int = 16, desc: str | None = None) -> list[str]:
    """Stripped completions of many prompts, in their order, generated ``batch_size`` at a time
    in order of prompt length (less padding); a progress bar when ``desc`` is given."""
    from tqdm.auto import tqdm

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out = [""] * len(prompts)
    starts = range(0, len(order), max(batch_size, 1))
    for at in tqdm(starts, desc=desc, leave=False, disable=desc is None):
        rows = order[at: at + batch_size]
        for i, text in zip(rows, generate(model, tokenizer, [prompts[i] for i in rows], cfg).texts, strict=True):
            out[i] = text.strip()
    return out


def generate_uncached(model: TaskModel, tokenizer: Any, prompts: Sequence[Sequence[int]],
                      cfg: GenerationConfig | None = None, keep_logits: bool = False) -> Generation:
    """The same decoding, recomputing the whole sequence with ``TaskModel.forward`` each step."""
    cfg = cfg or GenerationConfig()
    seq: list[torch.Tensor] = []

    @torch.no_grad()
    def next_logits(ids: torch.Tensor, mask: torch.Tensor, nxt: torch.Tensor | None) -> torch.Tensor:
        if nxt is None:
            seq.extend([ids, mask])
        else:
            seq[0] = torch.cat([seq[0], nxt[:, None]], dim=1)
            seq[1] = torch.cat([seq[1], torch.ones_like(seq[1][:, :1])], dim=1)
        return model({"input_ids": seq[0], "attention_mask": seq[1]})[:, -1].float()

    return _decode(model, tokenizer, prompts, cfg, next_logits, keep_logits)


def chat_prompt_ids(tokenizer: Any, prompt: str, system: str | None = None, chat: bool = True) -> list[int]:
    """The prompt's ids: the tokenizer's chat template with the assistant header (when it has
    one and ``chat``, as :func:`fedft.data.sft.chat_prompt_ids`), else the plain text."""
    if chat and getattr(tokenizer, "chat_template", None):
        from fedft.data.sft import chat_prompt_ids as templated

        return templated(tokenizer, prompt, system)
    return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])


def load_for_generation(model_name: str | None = None, run_dir: str | None = None,
                        precision: str = "auto") -> tuple[TaskModel, Any]:
    """A causal-LM TaskModel and its tokenizer: the plain model ``model_name`` (an asset name, a
    directory or a Hub id), or the fine-tuned model of ``run_dir`` (its method and last
    checkpoint)."""
    from dataclasses import replace

    from fedft.config import ExperimentConfig, MethodConfig, ModelConfig
    from fedft.errors import ConfigError
    from fedft.model.build import build_model, set_precision

    if (model_name is None) == (run_dir is None):
        raise ConfigError("give either --model NAME or a RUN_DIR, not both")
    if run_dir is not None:
        from fedft.evaluation import load_run

        run = load_run(run_dir)
        model, tok = run.model, run.preprocess
    else:
        cfg = ExperimentConfig()
        cfg = cfg.replace(model=replace(ModelConfig(), name=model_name, task="causal_lm"),
                          method=MethodConfig(name="full_ft"), train=replace(cfg.train, precision=precision))
        model, _, tok = build_model(cfg, num_labels=0)
    if model.task != "causal_lm":
        raise ConfigError(f"{model_name or run_dir} is not a causal language model (model.task = 'causal_lm')")
    if hasattr(tok, "ids"):  # fedft.data.text.HashTokenizer: text prompts cannot be encoded for it
        raise ConfigError("this model has no real tokenizer (a tiny test model); use an asset such as smollm2-135m")
    set_precision(model, precision)
    return model.eval(), tok
