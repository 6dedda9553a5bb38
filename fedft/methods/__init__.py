"""Fine-tuning methods, one module each, registered in :data:`METHODS`."""

from fedft.methods import full_ft as full_ft  # noqa: F401
from fedft.methods import linear_probe as linear_probe  # noqa: F401
from fedft.methods import prompt_tuning as prompt_tuning  # noqa: F401
from fedft.methods.base import METHODS, BaseMethod

__all__ = ["METHODS", "BaseMethod"]
