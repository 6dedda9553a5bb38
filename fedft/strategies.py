"""The strategy registry: how an experiment is organised (central, federated, split).

A strategy descriptor is light (no Flower import) so configs can be validated quickly; the
federated machinery lives in :mod:`fedft.federated`.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedft.registry import Registry


@dataclass(frozen=True)
class StrategyInfo:
    """What a strategy is: its family and a one-line description."""

    name: str
    family: str  # "central", "fl" (whole model on the client) or "split" (U-split with a body service)
    description: str


STRATEGIES: Registry[StrategyInfo] = Registry("strategy")


def _register(name: str, family: str, description: str) -> None:
    STRATEGIES.register(name)(StrategyInfo(name, family, description))


_register("central", "central", "train on all data in one place (no federation)")

# The embedded default of `fedft run` (the main job); experiments/configs/ has the same as TOML.
DEFAULT_OVERRIDES: list[str] = [
    "federation.strategy=central",
    "method.name=linear_probe",
    "train.epochs=30",
]
