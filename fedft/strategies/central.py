"""Central fine-tuning: all training data in one place, no federation (the first baseline)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedft.config import ExperimentConfig
from fedft.errors import FedftError
from fedft.strategies.base import Strategy, register_strategy


@register_strategy
class Central(Strategy):
    name = "central"
    description = "train on all data in one place (no federation)"
    family = "central"

    def run(self, cfg: ExperimentConfig, out: Path, resume: bool, show: bool) -> dict[str, Any]:
        from fedft.central import run_central
        from fedft.outputs import RunDir

        if resume:
            raise FedftError("central runs cannot be resumed; run them again")
        return run_central(cfg, RunDir(out))
