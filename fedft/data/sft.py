"""Supervised fine-tuning data for causal language models: examples, the chat template, loss on
response tokens only, dynamic padding, packing without cross-attention, and an on-disk cache.

An :class:`SFTExample` is a (prompt, response) pair with a task id (for multi-task losses) and a
group (language, topic, source: what a federated partition may split by). :func:`tokenize`
renders it with the tokenizer's chat template (no system prompt unless one is given) and labels
only the response: prompt and padding are ``IGNORE`` (-100, what ``torch.nn.functional.cross_entropy``
skips). An over-long example loses tokens from the left of its prompt first, so the response and
the end of the question survive.

Two ways to batch:

- :func:`pad_batch`: one example per row, right-padded to the longest row of the batch.
- :func:`pack`: several examples per row, first-fit in input order, each with its own position
  ids (0, 1, ...) and a segment id; :func:`packed_attention_mask` turns the segment ids into a
  block-diagonal causal mask, so no token attends to another example (the logits of a packed
  example equal its logits alone).

Given a task index (task name -> id), both also return ``task_ids`` for multi-task losses
(:mod:`fedft.losses.mftcoder`): one per row when padding, one per token when packing.

:func:`tokenize_cached` stores a tokenised set under a key made of the tokenizer (its vocabulary,
special tokens and chat template), the settings and the examples' content.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

IGNORE = -100  # the label cross-entropy skips


@dataclass(frozen=True)
class SFTExample:
    """One supervised example: the model should answer ``prompt`` with ``response``."""

    prompt: str
    response: str
    task: str = "default"  # which task (and loss) the example belongs to
    group: str = ""  # what a partition may split by: a language, a topic, a source


@dataclass(frozen=True)
class TokenizedExample:
    """Token ids and labels of one example (labels are ``IGNORE`` outside the response)."""

    input_ids: list[int]
    labels: list[int]
    task: str = "default"

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def response_tokens(self) -> int:
        return sum(label != IGNORE for label in self.labels)


def _messages(ex: SFTExample, system: str | None, with_response: bool) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system}] if system else []
    msgs.append({"role": "user", "content": ex.prompt})
    if with_response:
        msgs.append({"role": "assistant", "content": ex.response})
    return msgs


def _ids(out: Any) -> list[int]:
    """``apply_chat_template(tokenize=True)`` returns a list, or a BatchEncoding in newer versions."""
    if isinstance(out, dict) or hasattr(out, "keys"):
        out = out["input_ids"]
    return [int(i) for i in out]


def chat_prompt_ids(tokenizer: Any, prompt: str, system: str | None = None) -> list[int]:
    """A user turn (after an optional system turn) and the assistant header, through the
    tokenizer's chat template: what the model is asked to continue."""
    return _ids(tokenizer.apply_chat_template(_messages(SFTExample(prompt, ""), system, False), tokenize=True,
                                              add_generation_prompt=True))


def render(ex: SFTExample, tokenizer: Any, system: str | None = None) -> tuple[list[int], list[int]]:
    """The prompt's ids (ending with the assistant turn's header) and the response's ids (ending
    with the end-of-turn token), from the tokenizer's chat template; a tokenizer without one gets
    ``prompt + "\\n"`` and ``response + eos``."""
    if getattr(tokenizer, "chat_template", None):
        # rendered as text, split at the end of the prompt, tokenised apart: the response's ids are
        # then what generation produces after the prompt, even where the tokenizer would merge
        # across the boundary (a response starting with indentation after the header's newline)
        prompt_text = tokenizer.apply_chat_template(_messages(ex, system, False), tokenize=False,
                                                    add_generation_prompt=True)
        full_text = tokenizer.apply_chat_template(_messages(ex, system, True), tokenize=False)
        if not full_text.startswith(prompt_text):
            raise ValueError("the chat template does not render the prompt as a prefix of the conversation; "
                             "response-only labels need it (set a template that does, or none)")
        prompt = chat_prompt_ids(tokenizer, ex.prompt, system)
        response = _ids(tokenizer(full_text[len(prompt_text):], add_special_tokens=False))
        eos = getattr(tokenizer, "eos_token_id", None)
        if eos in response:  # what a template renders after the end of turn (a newline) is not learnt
            response = response[: len(response) - response[::-1].index(eos)]
        return prompt, response
    if system:
        raise ValueError("a system prompt needs a tokenizer with a chat template")
    if hasattr(tokenizer, "ids"):  # fedft.data.text.HashTokenizer (tiny test models): CLS ... SEP
        return [tokenizer.cls_token_id, *tokenizer.ids(ex.prompt)], [*tokenizer.ids(ex.response), tokenizer.sep_token_id]
    prompt = list(tokenizer(ex.prompt + "\n", add_special_tokens=True)["input_ids"])
    response = list(tokenizer(ex.response, add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is not None:
        response.append(int(tokenizer.eos_token_id))
    return prompt, response


def tokenize(ex: SFTExample, tokenizer: Any, max_length: int, system: str | None = None,
             min_prompt: int = 8) -> TokenizedExample:
    """Ids and response-only labels of ``ex``, at most ``max_length`` tokens. Too long: the prompt
    loses tokens from its left down to ``min_prompt`` (the assistant header is at its end), then
    the response is cut on the right."""
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    prompt, response = render(ex, tokenizer, system)
    over = len(prompt) + len(response) - max_length
    if over > 0:
        keep = min(min_prompt, max_length - 1)  # at least one response token survives
        drop = min(over, max(len(prompt) - keep, 0))
        prompt = prompt[drop:]
        response = response[: max_length - len(prompt)]
    return TokenizedExample(prompt + response, [IGNORE] * len(prompt) + response, ex.task)


def _task_id(it: TokenizedExample, task_index: Mapping[str, int]) -> int:
    try:
        return task_index[it.task]
    except KeyError:
        raise ValueError(f"task {it.task!r} is not in the task index ({', '.join(task_index)})") from None


def pad_batch(items: Sequence[TokenizedExample], pad_id: int,
              task_index: Mapping[str, int] | None = None) -> dict[str, torch.Tensor]:
    """One example per row, right-padded to the longest: input_ids, attention_mask, labels
    (``IGNORE`` on padding) and position_ids; with ``task_index`` (task name -> id) also
    task_ids, one per row (B,)."""
    if not items:
        raise ValueError("pad_batch needs at least one example")
    n = max(len(it) for it in items)
    ids = torch.full((len(items), n), pad_id, dtype=torch.long)
    labels = torch.full((len(items), n), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(items), n), dtype=torch.long)
    for i, it in enumerate(items):
        ids[i, : len(it)] = torch.tensor(it.input_ids)
        labels[i, : len(it)] = torch.tensor(it.labels)
        mask[i, : len(it)] = 1
    out = {"input_ids": ids, "attention_mask": mask, "labels": labels,
           "position_ids": torch.arange(n).expand(len(items), n).clone()}
    if task_index is not None:
        out["task_ids"] = torch.tensor([_task_id(it, task_index) for it in items], dtype=torch.long)
    return out


def pack(items: Sequence[TokenizedExample], max_length: int, pad_id: int,
         task_index: Mapping[str, int] | None = None) -> dict[str, torch.Tensor]:
    """Several examples per row (first fit, in input order; each at most ``max_length``):
    input_ids, labels, position_ids restarting at 0 per example, segment_ids (1, 2, ... per
    example in its row; 0 on padding) and attention_mask (1 on tokens, 0 on padding). Feed
    :func:`packed_attention_mask` of segment_ids to the model, not attention_mask. With
    ``task_index`` (task name -> id) also task_ids, one per token (B, T), 0 on padding (whose
    labels are ``IGNORE``)."""
    rows: list[list[TokenizedExample]] = []
    room: list[int] = []
    for it in items:
        if len(it) > max_length:
            raise ValueError(f"an example of {len(it)} tokens does not fit max_length={max_length}; "
                             "tokenize with the same max_length")
        j = next((k for k, r in enumerate(room) if r >= len(it)), None)
        if j is None:
            rows.append([it])
            room.append(max_length - len(it))
        else:
            rows[j].append(it)
            room[j] -= len(it)
    n = max(max_length - r for r in room) if rows else 0
    shape = (len(rows), n)
    out = {"input_ids": torch.full(shape, pad_id, dtype=torch.long),
           "labels": torch.full(shape, IGNORE, dtype=torch.long),
           "position_ids": torch.zeros(shape, dtype=torch.long),
           "segment_ids": torch.zeros(shape, dtype=torch.long)}
    tasks = torch.zeros(shape, dtype=torch.long)
    for i, row in enumerate(rows):
        at = 0
        for s, it in enumerate(row, start=1):
            sl = slice(at, at + len(it))
            out["input_ids"][i, sl] = torch.tensor(it.input_ids)
            out["labels"][i, sl] = torch.tensor(it.labels)
            out["position_ids"][i, sl] = torch.arange(len(it))
            out["segment_ids"][i, sl] = s
            if task_index is not None:
                tasks[i, sl] = _task_id(it, task_index)
            at += len(it)
    out["attention_mask"] = (out["segment_ids"] > 0).long()
    if task_index is not None:
        out["task_ids"] = tasks
    return out


def packed_attention_mask(segment_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, 1, T, T) additive mask (0 where query t may attend key u: u <= t, both in the same
    example, neither padding; the dtype's minimum elsewhere), the form Hugging Face models take
    as a custom 4D mask in eager and SDPA attention. A padding query attends to itself only."""
    t = segment_ids.shape[-1]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    real = segment_ids > 0
    allowed = same & causal & real[:, :, None] & real[:, None, :]
    allowed |= torch.eye(t, dtype=torch.bool)  # padding rows: no NaN from an all-masked softmax
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of what decides the ids: the vocabulary, the special tokens and the chat template."""
    h = hashlib.sha256()
    h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps({k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())}).encode())
    h.update(str(getattr(tokenizer, "chat_template", None) or "").encode())
    h.update(type(tokenizer).__name__.encode())
    return h.hexdigest()[:16]


#: bumped whenever :func:`render` or :func:`tokenize` changes what they produce (stale caches miss)
RENDER_VERSION = 2


def cache_key(examples: Iterable[SFTExample], tokenizer: Any, max_length: int, system: str | None,
              min_prompt: int) -> str:
    h = hashlib.sha256(tokenizer_fingerprint(tokenizer).encode())
    h.update(json.dumps({"max_length": max_length, "system": system, "min_prompt": min_prompt,
                         "render": RENDER_VERSION}).encode())
    for ex in examples:
        h.update(json.dumps(asdict(ex), ensure_ascii=False).encode())
    return h.hexdigest()[:24]


def tokenize_cached(examples: Sequence[SFTExample], tokenizer: Any, max_length: int, cache_dir: str | Path,
                    system: str | None = None, min_prompt: int = 8) -> list[TokenizedExample]:
    """:func:`tokenize` of every example, read from ``cache_dir`` when the same tokenizer,
    settings and examples were tokenised before (written atomically otherwise)."""
    path = Path(cache_dir) / f"sft-{cache_key(examples, tokenizer, max_length, system, min_prompt)}.json"
    if path.is_file():
        return [TokenizedExample(**d) for d in json.loads(path.read_text())]
    items = [tokenize(ex, tokenizer, max_length, system, min_prompt) for ex in examples]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([asdict(it) for it in items]))
    tmp.replace(path)
    return items
