"""Decoding methods: the plugin interface and registry, and the combination of several models'
next-token distributions (the ``LogitCombiner`` interface of EFT and Transfer Q*), on the
step-wise interface of :mod:`fedft.generation`.

A decoding method changes how a model's text is produced, not its weights. It registers itself
with :func:`register_decoder` (which also declares its ``[decoding.<name>]`` options table),
names the models it needs by role (``roles``: for EFT the large base, the small fine-tuned model
and the small reference), and implements ``generate(models, tokenizer, prompts, cfg)``.

A combiner maps the per-model next-token log-probabilities of one step, ``{name: (B, V)}``, to
the (B, V) logits to sample from. :func:`generate_combined` prefills every model with the same
prompts, then at every step combines, picks one token per row (greedy or seeded sampling, as
:func:`fedft.generation.generate`), and feeds it to every model's KV cache.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol

import torch

from fedft.generation import Generation, GenerationConfig, _decode, prefill, step
from fedft.model.task import TaskModel
from fedft.options import plugin_registrar
from fedft.registry import Registry


class LogitCombiner(Protocol):
    """Per-step arithmetic on several models' next-token log-probabilities."""

    names: tuple[str, ...]  # the models it needs

    def __call__(self, logprobs: Mapping[str, torch.Tensor]) -> torch.Tensor: ...


def generate_combined(models: Mapping[str, TaskModel], combiner: LogitCombiner, tokenizer: Any,
                      prompts: Sequence[Sequence[int]], cfg: GenerationConfig | None = None,
                      keep_logits: bool = False) -> Generation:
    """Decode from ``combiner`` over ``models`` (every model fed the same tokens, each with its
    own KV cache); the models must share ``tokenizer``'s vocabulary."""
    missing = set(combiner.names) - set(models)
    if missing:
        raise ValueError(f"the combiner needs models {sorted(missing)}; got {sorted(models)}")
    sizes = {n: m.output_layer.out_features for n, m in models.items() if n in combiner.names}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"the models' vocabularies differ: {sizes}")
    states: dict[str, Any] = {}
    was = {n: m.training for n, m in models.items()}
    for m in models.values():
        m.eval()

    def next_logits(ids: torch.Tensor, mask: torch.Tensor, nxt: torch.Tensor | None) -> torch.Tensor:
        out = {}
        for n in combiner.names:
            if nxt is None:
                logits, states[n] = prefill(models[n], ids, mask)
            else:
                logits = step(models[n], states[n], nxt)
            out[n] = torch.log_softmax(logits, dim=-1)
        return combiner(out)

    try:
        return _decode(models[combiner.names[0]], tokenizer, prompts, cfg or GenerationConfig(), next_logits,
                       keep_logits)
    finally:
        for n, m in models.items():
            m.train(was[n])


class DecodingMethod:
    """Base class of a decoding plugin: ``generate(models, tokenizer, prompts, cfg)`` with one
    model per role in ``roles`` (all sharing ``tokenizer``)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    kind: ClassVar[str] = "decoding method"
    roles: ClassVar[tuple[str, ...]] = ()
    Options: ClassVar[type | None] = None

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else (self.Options() if self.Options else None)

    def generate(self, models: Mapping[str, TaskModel], tokenizer: Any, prompts: Sequence[Sequence[int]],
                 cfg: GenerationConfig | None = None) -> Generation:
        raise NotImplementedError


DECODERS: Registry[type[DecodingMethod]] = Registry("decoding method")

#: ``@register_decoder("name", NameOptions)``: register a decoding method and its ``[decoding.<name>]`` table
register_decoder = plugin_registrar(DECODERS, "decoding")
