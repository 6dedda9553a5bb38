"""The data-recipe interface and its registry.

A data recipe does not change how a model is trained but what it is trained on: it turns a pool
of candidate SFT examples into the training set, using the model to be tuned where the paper
does (scoring, generating, judging). The result is fine-tuned by any registered method.

A recipe registers itself with :func:`register_recipe`, which also declares its options
dataclass (the ``[recipe.<name>]`` table). It sees the model as built for training: the
pre-trained weights with the method's fresh tensors (identity at initialisation for LoRA, IA3
and SSF), the "untuned target" of the papers. ``federated`` says whether a client may run it on
its own data (inference only, from the global model it receives at round 1).

Data selection shares the :class:`~fedft.selection.Selector` interface, ``select(pool, budget) -> indices``:
random, EL2N, GRAPE, GOT-D and the GeMQuAD filter are all selectors, so they compare in one table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from fedft.data.sft import SFTExample
from fedft.options import plugin_registrar
from fedft.registry import Registry
from fedft.selection import Selector as Selector  # noqa: F401  (re-exported)


@dataclass
class RecipeContext:
    """What a recipe may use: the model to be tuned (a :class:`~fedft.model.task.TaskModel`),
    its tokenizer and the run's SFT settings."""

    model: Any
    tokenizer: Any
    max_length: int = 512
    system: str | None = None
    seed: int = 0
    batch_size: int = 8

    @property
    def pad_id(self) -> int:
        pad = getattr(self.tokenizer, "pad_token_id", None)
        return int(pad) if pad is not None else 0


@dataclass
class RecipeResult:
    """The training set a recipe built and what it did (counts, sources; JSON-serialisable)."""

    examples: list[SFTExample]
    report: dict[str, Any] = field(default_factory=dict)


class Recipe:
    """Base class: ``build(pool, ctx)`` returns the training set."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    kind: ClassVar[str] = "data recipe"
    federated: ClassVar[bool] = False  # a client may run it on its own pool
    Options: ClassVar[type | None] = None

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else (self.Options() if self.Options else None)

    def build(self, pool: Sequence[SFTExample], ctx: RecipeContext) -> RecipeResult:
        raise NotImplementedError


RECIPES: Registry[type[Recipe]] = Registry("recipe")

#: ``@register_recipe("name", NameOptions)``: register a recipe and its ``[recipe.<name>]`` table
register_recipe = plugin_registrar(RECIPES, "recipe")
