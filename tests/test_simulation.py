"""Flower simulation end to end: every federated strategy, 2 rounds, 3 clients, in ONE simulation
session (Ray starts once), checked against the in-process engine's ledger."""

from __future__ import annotations

import dataclasses

import pytest

from fedft.accounting import CommLedger
from fedft.config import ExperimentConfig
from fedft.federated.simulation import run_simulated
from fedft.outputs import RunDir
from fedft.runner import run
from fedft.strategies import STRATEGIES

TINY = [
    "model.name=tiny-vit", "data.name=synthetic-images", "data.image_size=16", "data.train_size=96",
    "data.test_size=32", "partition.scheme=iid", "partition.num_clients=3", "partition.min_size=4",
    "federation.rounds=2", "train.batch_size=8", "method.prompt_len=4", "output.plots=true",
]
FEDERATED = [n for n in STRATEGIES.names() if STRATEGIES.get(n).family != "central"
             and STRATEGIES.get(n).__module__.startswith("fedft.")]  # not the toy ones of test_plugins
SPLIT_KINDS = ("params_down", "params_up", "activations_up", "activations_down", "grads_up", "grads_down")


@pytest.mark.slow
def test_every_strategy_in_one_flower_simulation(tmp_path):
    base = ExperimentConfig.from_overrides(TINY)
    jobs = []
    for name in FEDERATED:
        cfg = STRATEGIES.get(name).configure(base.replace(federation=dataclasses.replace(base.federation, strategy=name)))
        jobs.append((cfg, RunDir(tmp_path / "sim" / name)))
    summaries = run_simulated(jobs)
    assert [s["strategy"] for s in summaries] == FEDERATED
    for (cfg, rd), s in zip(jobs, summaries, strict=True):
        rows = (rd.path / "metrics.csv").read_text().splitlines()[1:]
        assert len(rows) == 2 and all(r.split(",")[4] == "0" for r in rows), (s["strategy"], rows)  # no failures
        for f in ("ledger.csv", "summary.json", "partitions.json", "config.toml", "accuracy.png",
                  "accuracy_vs_bytes.png", "bytes_by_kind.png"):
            assert (rd.path / f).is_file(), (s["strategy"], f)
        sim = CommLedger.from_csv(rd.path / "ledger.csv").by_kind()
        ref_cfg = cfg.replace(federation=dataclasses.replace(cfg.federation, engine="inprocess"),
                              output=dataclasses.replace(cfg.output, plots=False))
        run(ref_cfg, tmp_path / "ref" / s["strategy"], show=False)
        ref = CommLedger.from_csv(tmp_path / "ref" / s["strategy"] / "ledger.csv").by_kind()
        assert {k: sim.get(k, 0) for k in SPLIT_KINDS} == {k: ref.get(k, 0) for k in SPLIT_KINDS}, s["strategy"]
        assert sim["control"] > 0  # Flower's config records and the hello query
