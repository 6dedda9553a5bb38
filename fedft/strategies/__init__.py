"""Strategies: how an experiment is organised (central, federated, split), one module per family.

Adding a strategy: a module with a :class:`~fedft.strategies.base.Strategy` subclass decorated
with :func:`~fedft.strategies.base.register_strategy`, and one import line below.
"""

from fedft.strategies import central as central  # noqa: F401
from fedft.strategies import fedavg as fedavg  # noqa: F401
from fedft.strategies import sfprompt as sfprompt  # noqa: F401
from fedft.strategies import sl as sl  # noqa: F401
from fedft.strategies import splitfed as splitfed  # noqa: F401
from fedft.strategies.base import STRATEGIES, RoundContext, Strategy, register_strategy, variant

__all__ = ["STRATEGIES", "RoundContext", "Strategy", "register_strategy", "variant"]
