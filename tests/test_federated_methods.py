"""Every fine-tuning method as the client-side method of a federated run (``fedavg``), and the
exact bytes of partial (HFT, GreenTrainer) and sparse (LT-SFT) updates in the ledger."""

from __future__ import annotations

import csv
from collections import defaultdict

import pytest

from fedft.accounting import CommLedger
from fedft.config import ExperimentConfig
from fedft.federated.checkpoint import load
from fedft.methods import METHODS, BaseMethod
from fedft.runner import run

N_CLIENTS, ROUNDS = 3, 3
TINY = [
    "model.name=tiny-vit", "data.name=synthetic-images", "data.image_size=16", "data.train_size=96",
    "data.test_size=32", "partition.scheme=iid", f"partition.num_clients={N_CLIENTS}", "partition.min_size=4",
    f"federation.rounds={ROUNDS}", "federation.engine=inprocess", "federation.strategy=fedavg",
    "train.batch_size=8", "train.eval_batch_size=32", "method.prompt_len=4", "output.plots=false",
    "train.lr=0.01", "method.hft.reselect_every_epochs=1", "method.lt_sft.phase1_epochs=1",
    "method.light_peft.estimation_epochs=1",
]
NPY_HEADER = 128  # Flower's Array.data is .npy bytes; v1.0 header for these shapes


def _run(tmp_path, method: str, *extra: str):
    d = tmp_path / method
    summary = run(ExperimentConfig.from_overrides([*TINY, f"method.name={method}", *extra]), d, show=False)
    with open(d / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    per_round: dict[tuple[int, str], int] = defaultdict(int)
    for e in CommLedger.from_csv(d / "ledger.csv").events:
        per_round[(e.round, e.kind)] += e.nbytes
    return summary, rows, per_round, d


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_trains_federated(tmp_path, method):
    summary, rows, per_round, _ = _run(tmp_path, method)
    assert [int(r["failed"]) for r in rows[:ROUNDS]] == [0] * ROUNDS, rows
    assert [int(r["clients"]) for r in rows[:ROUNDS]] == [N_CLIENTS] * ROUNDS
    assert summary["final_accuracy"] == summary["test_accuracy"] and summary["test_samples"] == 32
    assert all(per_round[(r, "params_up")] > 0 for r in range(1, ROUNDS + 1))
    # a method with a finalize (merge, interpolate, prune) runs it on the final global model,
    # which adds one evaluation row
    assert len(rows) == ROUNDS + (METHODS.get(method).finalize is not BaseMethod.finalize)


def test_lt_sft_sends_exactly_k_indices_and_values_after_phase_one(tmp_path):
    _, _, per_round, d = _run(tmp_path, "lt_sft", "method.lt_sft.k=200")
    final = load(d).global_update  # the last download: the masked FedAvg of the uploads
    idx = {k: v for k, v in final.items() if k.endswith("::idx")}
    assert sum(len(v) for v in idx.values()) == 200  # one shared mask of K entries
    assert all(final[k[:-5] + "::val"].dtype.name == "float32" and v.dtype.name == "int64" for k, v in idx.items())
    dense_names = [k for k in final if "::" not in k]
    assert all(k.startswith(("classifier.",)) for k in dense_names), dense_names  # the head stays dense
    per_client = sum(v.nbytes + NPY_HEADER + len(k) for k, v in final.items())
    for r in (2, 3):
        assert per_round[(r, "params_up")] == N_CLIENTS * per_client
        assert per_round[(r, "params_down")] == N_CLIENTS * per_client
    assert per_round[(1, "params_up")] > 5 * per_round[(2, "params_up")]  # phase 1 was dense


@pytest.mark.parametrize("method", ["hft", "greentrainer"])
def test_partial_methods_upload_only_what_they_trained(tmp_path, method):
    _, _, per_round, _ = _run(tmp_path, method)
    for r in range(1, ROUNDS + 1):
        assert per_round[(r, "params_up")] < 0.75 * per_round[(r, "params_down")], (method, r)


def test_a_method_inside_split_training_trains_only_client_held_tensors(tmp_path):
    # LoRA on the client's tail block (t = 1): what travels is that block's adapters and the classifier
    summary, rows, _, d = _run(tmp_path, "lora", "federation.strategy=split_fedavg", "split.tail_blocks=1")
    assert [int(r["failed"]) for r in rows[:ROUNDS]] == [0] * ROUNDS
    names = sorted(load(d).global_update)
    assert names and all(n.startswith(("backbone.layers.3.", "classifier.", "backbone.layernorm")) for n in names), names
    assert any("lora_" in n for n in names)
    assert summary["bytes_by_kind"]["activations_up"] > 0


def test_hft_stage_follows_the_round_in_every_client_call_and_on_the_server(tmp_path, monkeypatch):
    # one process trains all clients in turn (the in-process engine, like a Flower actor reused by
    # several clients): the stage must come from the round, not from how often the hook ran
    from fedft.methods.hft import HFT

    stages = []
    real = HFT.on_client_round

    def spy(self, model, server_round):
        real(self, model, server_round)
        stages.append((server_round, self.stage))

    monkeypatch.setattr(HFT, "on_client_round", spy)
    summary, *_ = _run(tmp_path, "hft")
    assert len(stages) == ROUNDS * N_CLIENTS
    assert all(stage == rnd - 1 for rnd, stage in stages), stages  # reselect_every_epochs = 1
    assert summary["method_report"]["stage"] == ROUNDS - 1  # the server's model, same stage


def test_greentrainer_each_client_selects_on_its_own_batch_every_round(tmp_path, monkeypatch):
    import fedft.federated.engine as engine
    from fedft.methods.greentrainer import GreenTrainer

    current, selections = [], []
    real_handle, real_select = engine.handle_train, GreenTrainer.select

    def handle(content, pid, state=None):
        current.append(pid)
        return real_handle(content, pid, state)

    def select(self, model, batch):
        selections.append((current[-1], len(current)))
        return real_select(self, model, batch)

    monkeypatch.setattr(engine, "handle_train", handle)
    monkeypatch.setattr(GreenTrainer, "select", select)
    _run(tmp_path, "greentrainer")
    # one selection inside every client call, by the client being trained, none reused
    assert [call for _, call in selections] == list(range(1, ROUNDS * N_CLIENTS + 1))
    assert [pid for pid, _ in selections] == current
