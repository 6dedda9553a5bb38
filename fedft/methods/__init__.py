"""Fine-tuning methods, one module each, registered in :data:`METHODS`."""

from fedft.methods import antidote as antidote  # noqa: F401
from fedft.methods import full_ft as full_ft  # noqa: F401
from fedft.methods import greentrainer as greentrainer  # noqa: F401
from fedft.methods import hft as hft  # noqa: F401
from fedft.methods import ia3 as ia3  # noqa: F401
from fedft.methods import light_peft as light_peft  # noqa: F401
from fedft.methods import linear_probe as linear_probe  # noqa: F401
from fedft.methods import lora as lora  # noqa: F401
from fedft.methods import lt_sft as lt_sft  # noqa: F401
from fedft.methods import prompt_tuning as prompt_tuning  # noqa: F401
from fedft.methods import s2ft as s2ft  # noqa: F401
from fedft.methods import ssf as ssf  # noqa: F401
from fedft.methods import wise_ft as wise_ft  # noqa: F401
from fedft.methods.base import METHODS, BaseMethod, register_method

__all__ = ["METHODS", "BaseMethod", "register_method"]
