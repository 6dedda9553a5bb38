"""Running the configured data recipe on a run's training data (central, or per client)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedft.config import ExperimentConfig
from fedft.data.sft import SFTExample
from fedft.errors import ConfigError
from fedft.recipes.base import RECIPES, Recipe, RecipeContext, RecipeResult


def recipe_for(cfg: ExperimentConfig) -> Recipe | None:
    """The configured recipe (None for ``recipe.name = "none"``); an unknown name is a ConfigError."""
    name = cfg.recipe.name
    if name == "none":
        return None
    try:
        cls = RECIPES.get(name)
    except KeyError as e:
        raise ConfigError(f"bad value {name!r} for recipe.name; {e.args[0].split('; ')[1]} or none") from None
    if cfg.federation.strategy != "central" and not cls.federated:
        raise ConfigError(f"recipe {name!r} runs centrally only (federation.strategy = \"central\"); "
                          f"per-client recipes: {', '.join(n for n in RECIPES.names() if RECIPES.get(n).federated)}")
    return cls(cfg.recipe.options_for(name))


def context(cfg: ExperimentConfig, model: Any, tokenizer: Any, system: str | None) -> RecipeContext:
    return RecipeContext(model, tokenizer, cfg.data.max_length, system, cfg.seed, cfg.train.eval_batch_size)


def run_recipe(recipe: Recipe, pool: Sequence[SFTExample], ctx: RecipeContext) -> RecipeResult:
    """``recipe.build`` with the model in eval mode (restored after); an empty result is an error."""
    was = ctx.model.training
    ctx.model.eval()
    try:
        result = recipe.build(list(pool), ctx)
    finally:
        ctx.model.train(was)
    if not result.examples:
        raise ConfigError(f"recipe {recipe.name!r} kept no training example out of {len(pool)}; "
                          "loosen its options or use a larger data.train_size")
    result.report = {"recipe": recipe.name, "pool": len(pool), "built": len(result.examples), **result.report}
    return result


def apply_central(cfg: ExperimentConfig, raw: Any, model: Any, tokenizer: Any) -> RecipeResult | None:
    """Replace ``raw``'s training split by the recipe's training set (group indices extended)."""
    recipe = recipe_for(cfg)
    if recipe is None:
        return None
    if raw.modality != "sft":
        raise ConfigError(f"recipe.name = {recipe.name!r} needs an SFT dataset (data.name), not {cfg.data.name!r}")
    result = run_recipe(recipe, raw.train_x, context(cfg, model, tokenizer, raw.system))
    raw.train_x = list(result.examples)
    raw.train_y = group_indices(result.examples, raw.label_names)
    return result


def group_indices(examples: Sequence[SFTExample], names: list[str]) -> np.ndarray:
    """Each example's index into ``names`` (by ``group``, then by its language prefix); a new group
    is appended to ``names``."""
    out = []
    for ex in examples:
        key = ex.group if ex.group in names else ex.group.split("/")[0]
        if key not in names:
            names.append(key)
        out.append(names.index(key))
    return np.asarray(out, dtype=np.int64)


def write_built(path: str | Path, result: RecipeResult) -> None:
    """The built training set as JSON lines (prompt, response, task, group) and the report."""
    path = Path(path)
    with open(path / "recipe_train.jsonl", "w") as f:
        for ex in result.examples:
            f.write(json.dumps({"prompt": ex.prompt, "response": ex.response, "task": ex.task, "group": ex.group}) + "\n")
    report = dict(result.report)
    report.setdefault("by_task", dict(Counter(ex.task for ex in result.examples)))
    (path / "recipe.json").write_text(json.dumps(report, indent=1, default=str))


def client_examples(cfg: ExperimentConfig, examples: Sequence[SFTExample], model: Any, tokenizer: Any,
                    system: str | None) -> RecipeResult:
    """One client's training set, built by the configured (federated) recipe from its own examples
    with the model it holds: nothing leaves the client but the usual updates."""
    recipe = recipe_for(cfg)
    assert recipe is not None
    return run_recipe(recipe, examples, context(cfg, model, tokenizer, system))
