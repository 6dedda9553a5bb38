"""federation.aggregator: Flower's own strategies combine what travels through Flower."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.serverapp.strategy import FedAvg
from test_federated import TINY

from fedft import keys
from fedft.config import ExperimentConfig
from fedft.errors import FedftError
from fedft.federated.aggregation import aggregate
from fedft.federated.aggregators import (
    AGGREGATORS,
    Aggregator,
    MaskedFedAvg,
    _identity,
    reply_message,
)
from fedft.federated.records import to_arrays
from fedft.runner import run


def _updates(n: int = 3, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"a": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=5).astype(np.float32)}
            for _ in range(n)]


def _replies(updates, weights):
    from flwr.app import MetricRecord, RecordDict

    return [reply_message(RecordDict({keys.ARRAYS: to_arrays(u), keys.METRICS: MetricRecord({keys.AGG_WEIGHT: w})}),
                          i, 1) for i, (u, w) in enumerate(zip(updates, weights, strict=True))]


def test_default_aggregator_equals_the_hand_written_fedavg_and_flowers():
    # Prepare: three dense updates with unequal example counts
    ups, w = _updates(), [10.0, 30.0, 60.0]
    agg = Aggregator("fedavg", None, 3)
    # Execute
    out = agg.aggregate(1, ups[0], [(i, u, wi) for i, (u, wi) in enumerate(zip(ups, w, strict=True))])
    with _identity():
        flower, _ = FedAvg(weighted_by_key=keys.AGG_WEIGHT).aggregate_train(1, _replies(ups, w))
    # Assert: bit-equal to fedft's FedAvg; equal to Flower's FedAvg up to its float32 accumulation
    ref = aggregate(ups, w)
    for k in ref:
        assert np.array_equal(out[k], ref[k])
        np.testing.assert_allclose(flower[k].numpy(), ref[k], rtol=1e-5, atol=1e-6)
    assert isinstance(agg.strategy, MaskedFedAvg) and isinstance(agg.strategy, FedAvg)


def test_masked_fedavg_averages_each_tensor_over_its_senders():
    ups = _updates(2)
    ups[1].pop("b")  # a partial update (HFT's half, GreenTrainer's selection)
    out = Aggregator("fedavg", None, 2).aggregate(1, ups[0], [(0, ups[0], 1.0), (1, ups[1], 3.0)])
    np.testing.assert_allclose(out["a"], (ups[0]["a"] + 3 * ups[1]["a"]) / 4, rtol=1e-6)
    assert np.array_equal(out["b"], ups[0]["b"])


def test_krum_picks_one_clients_update_and_median_is_coordinatewise():
    ups = _updates(5, seed=1)
    triples = [(i, u, 1.0) for i, u in enumerate(ups)]
    krum = Aggregator.for_config(ExperimentConfig.from_overrides(["federation.aggregator=krum",
                                                                 "partition.num_clients=5"]))
    out = krum.aggregate(1, ups[0], triples)
    assert any(all(np.array_equal(out[k], u[k]) for k in u) for u in ups)
    med = Aggregator("fedmedian", None, 5).aggregate(1, ups[0], triples)
    np.testing.assert_allclose(med["a"], np.median(np.stack([u["a"] for u in ups]), axis=0), rtol=1e-6)


def test_statistics_buffers_are_always_fedavged():
    ups = _updates(2)
    for u in ups:
        u["readout_norm.running_var"] = np.abs(u["b"]) + 1.0
    cfg = ExperimentConfig.from_overrides(["federation.aggregator=fedadam"])
    agg = Aggregator.for_config(cfg)
    out = agg.aggregate(1, ups[0], [(0, ups[0], 1.0), (1, ups[1], 1.0)], stats=["readout_norm.running_var"])
    np.testing.assert_allclose(out["readout_norm.running_var"],
                               (ups[0]["readout_norm.running_var"] + ups[1]["readout_norm.running_var"]) / 2)


def test_flower_aggregators_refuse_sparse_updates_with_a_clear_error():
    ups = _updates(2)
    ups[1].pop("b")
    with pytest.raises(FedftError, match="federation.aggregator=fedadam needs"):
        Aggregator.for_config(ExperimentConfig.from_overrides(["federation.aggregator=fedadam"])).aggregate(
            1, ups[0], [(0, ups[0], 1.0), (1, ups[1], 1.0)])


def test_unknown_aggregator_is_a_config_error():
    from fedft.config import validate_names
    from fedft.errors import ConfigError

    with pytest.raises(ConfigError, match="federation.aggregator"):
        validate_names(ExperimentConfig.from_overrides(["federation.aggregator=fedfoo"]))


@pytest.mark.parametrize("name", ["fedadam", "krum", "fedprox"])
def test_sfprompt_runs_with_flowers_aggregators(tmp_path, name):
    # Execute: the tiny SFPrompt job with one of Flower's strategies doing the aggregation
    cfg = ExperimentConfig.from_overrides([*TINY, "federation.strategy=sfprompt",
                                           f"federation.aggregator={name}"])
    summary = run(cfg, tmp_path / name, show=False)
    base = run(ExperimentConfig.from_overrides([*TINY, "federation.strategy=sfprompt"]), tmp_path / "avg", show=False)
    # Assert: it ran, it is recorded, and it changed the outcome relative to FedAvg
    assert summary["aggregator"] == name and summary["final_accuracy"] == summary["test_accuracy"]
    assert summary["bytes_by_kind"]["params_up"] == base["bytes_by_kind"]["params_up"]
    assert summary["final_loss"] != base["final_loss"]


def test_every_aggregator_is_listed(capsys):
    from fedft.cli import main

    assert main(["run", "--list-aggregators"]) == 0
    out = capsys.readouterr().out
    for name in ("fedavg", "fedprox", "fedadam", "fedyogi", "fedmedian", "fedtrimmedavg", "krum",
                 "dp_fixed_clipping"):
        assert name in AGGREGATORS and name in out
