"""Adding a method or a strategy is one module and one registration: both done here, in a test file
alone, and run end to end on the in-process engine."""

from __future__ import annotations

from dataclasses import dataclass

from test_federated import TINY
from torch import nn

from fedft import keys
from fedft.config import ExperimentConfig
from fedft.errors import check
from fedft.methods.base import BaseMethod, freeze_all, register_method, unfreeze
from fedft.runner import run
from fedft.strategies import RoundContext, register_strategy
from fedft.strategies.fedavg import FedAvg


@dataclass(frozen=True)
class ToyMethodOptions:
    train_norms: bool = True

    def __post_init__(self) -> None:
        check(isinstance(self.train_norms, bool), "method.toy_norms.train_norms", "true or false")


@register_method("toy_norms", ToyMethodOptions)
class ToyNorms(BaseMethod):
    description = "a toy method: the classifier and (optionally) every LayerNorm train"

    def apply(self, model: nn.Module) -> None:
        freeze_all(model)
        unfreeze([model.output_layer])
        if self.options.train_norms:
            for m in model.modules():
                if isinstance(m, nn.LayerNorm):
                    unfreeze([m])


@dataclass(frozen=True)
class ToyStrategyOptions:
    passes: int = 2


@register_strategy
class ToyTwice(FedAvg):
    """FedAvg whose clients train ``passes`` times over half their data."""

    name = "toy_twice"
    description = "a toy strategy: FedAvg over half of each client's data, several passes"
    Options = ToyStrategyOptions

    def client_train(self, ctx: RoundContext) -> dict[str, float]:
        ctx.idx = ctx.idx[: max(1, len(ctx.idx) // 2)]
        metrics = {}
        for _ in range(self.options.passes):
            metrics = super().client_train(ctx)
        metrics[keys.NUM_KEPT] = float(len(ctx.idx))
        return metrics


def test_a_method_and_a_strategy_registered_in_a_test_file_run(tmp_path):
    # Execute: the toy pair, configured like any other plugin
    cfg = ExperimentConfig.from_overrides([*TINY, "federation.strategy=toy_twice", "method.name=toy_norms",
                                           "federation.toy_twice.passes=3", "method.toy_norms.train_norms=false"])
    summary = run(cfg, tmp_path / "toy", show=False)
    # Assert: options reached the plugins, the classifier alone travelled, half the data trained
    assert cfg.federation.options_for("toy_twice").passes == 3
    assert cfg.method.options_for("toy_norms").train_norms is False
    assert summary["strategy"] == "toy_twice" and summary["method"] == "toy_norms"
    rows = (tmp_path / "toy" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    kept = int(rows[1].split(",")[header.index("kept_samples")])
    assert kept == 96 // 2  # 3 iid clients x 16 of their 32 samples
    with_norms = run(ExperimentConfig.from_overrides([*TINY, "federation.strategy=toy_twice", "method.name=toy_norms"]),
                     tmp_path / "toy_norms", show=False)
    assert summary["travelling_params"] < with_norms["travelling_params"]  # the option changed what trains
