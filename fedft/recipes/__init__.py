"""Data recipes, one module each, registered in :data:`RECIPES`."""

from fedft.recipes import gemquad as gemquad  # noqa: F401
from fedft.recipes import got_d as got_d  # noqa: F401
from fedft.recipes import grape as grape  # noqa: F401
from fedft.recipes import non_instructional as non_instructional  # noqa: F401
from fedft.recipes import s3ft as s3ft  # noqa: F401
from fedft.recipes.base import RECIPES, Recipe, RecipeContext, RecipeResult, register_recipe

__all__ = ["RECIPES", "Recipe", "RecipeContext", "RecipeResult", "register_recipe"]
