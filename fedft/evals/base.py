"""The evaluation-harness interface and its registry.

An evaluation harness is a benchmark protocol, not a training method: it builds (seeded,
deterministically) what a model is fine-tuned on where the protocol prescribes it, asks the
model its questions, judges the answers and returns named scores. It registers itself with
:func:`register_evaluation`, which also declares its options dataclass (the
``[evaluation.<name>]`` table).
"""

from __future__ import annotations

from typing import Any, ClassVar

from fedft.options import plugin_registrar
from fedft.registry import Registry


class Evaluation:
    """Base class: ``evaluate(model, tokenizer)`` -> {metric: value} (JSON-serialisable)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    kind: ClassVar[str] = "evaluation"
    Options: ClassVar[type | None] = None

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else (self.Options() if self.Options else None)

    def evaluate(self, model: Any, tokenizer: Any) -> dict[str, Any]:
        raise NotImplementedError


EVALUATIONS: Registry[type[Evaluation]] = Registry("evaluation")

#: ``@register_evaluation("name", NameOptions)``: register a harness and its ``[evaluation.<name>]`` table
register_evaluation = plugin_registrar(EVALUATIONS, "evaluation")
