"""The language-model sections of the experiment config: ``[generate]``, ``[recipe]`` and ``[loss]``
(re-exported by :mod:`fedft.config`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from fedft.errors import check as _check
from fedft.options import PluginOptions, get_options, with_defaults


@dataclass(frozen=True)
class GenerateConfig:
    """Generative evaluation of a causal LM during a run (fedft/gen_eval.py; docs/generation.md):
    greedy completions of an SFT dataset's prompts, judged against its responses, after each
    evaluation (round or epoch) and once on the final model. [D] off (``data = ""``)."""

    data: str = ""  # an SFT dataset (e.g. "trivia"); "" = off
    split: Literal["val", "test"] = "test"
    samples: int = 0  # 0 = every example of the split (after decontamination)
    judge: Literal["exact_match", "f1", "numeric"] = "exact_match"
    max_new_tokens: int = 32
    batch_size: int = 16

    def __post_init__(self) -> None:
        _check(self.samples >= 0, "generate.samples", "an integer >= 0 (0 = all)")
        for name in ("max_new_tokens", "batch_size"):
            _check(getattr(self, name) >= 1, f"generate.{name}", "an integer >= 1")


@dataclass(frozen=True)
class RecipeConfig:
    """A data recipe (fedft/recipes/; docs/recipes.md): builds the training set from the dataset's
    training split with the model to be tuned, before training. ``[recipe.<name>]`` tables hold a
    recipe's own options. [D] none: the training split as it is."""

    __options_section__ = "recipe"

    name: str = "none"
    options: PluginOptions = ()  # ((recipe, options), ...) from the [recipe.<name>] tables

    def __post_init__(self) -> None:
        if self.name != "none":
            object.__setattr__(self, "options", with_defaults(self.options, "recipe", [self.name]))

    def options_for(self, name: str) -> Any:
        """The options of recipe ``name`` (as configured, else its defaults)."""
        return get_options(self.options, "recipe", name)


@dataclass(frozen=True)
class LossConfig:
    """Options tables of loss plugins (fedft/losses/; docs/losses.md): ``[loss.<name>]`` holds the
    options of the loss that ``train.loss`` selects (the ``mftcoder`` multi-task losses, ...)."""

    __options_section__ = "loss"

    options: PluginOptions = ()  # ((loss, options), ...) from the [loss.<name>] tables

    def options_for(self, name: str) -> Any:
        """The options of loss ``name`` (as configured, else its defaults)."""
        return get_options(self.options, "loss", name)
