"""FedAvg, reply validation, EL2N selection and a server that survives garbage replies."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from fedft.federated.aggregation import aggregate
from fedft.federated.engine import parse_reply
from fedft.federated.payload import check_upload
from fedft.federated.records import reply_content
from fedft.strategies.sfprompt import n_kept, select_hardest


def test_fedavg_by_hand():
    # Prepare
    a = {"w": np.array([1.0, 2.0], np.float32), "b": np.array([0.0], np.float32)}
    b = {"w": np.array([3.0, 6.0], np.float32), "b": np.array([4.0], np.float32)}
    # Execute
    out = aggregate([a, b], [1, 3])
    # Assert: (1*a + 3*b) / 4
    np.testing.assert_allclose(out["w"], [2.5, 5.0])
    np.testing.assert_allclose(out["b"], [3.0])
    assert out["w"].dtype == np.float32


def test_clients_not_sampled_do_not_contribute():
    a = {"w": np.ones(3, np.float32)}
    assert np.array_equal(aggregate([a], [7])["w"], a["w"])
    with pytest.raises(ValueError):
        aggregate([], [])
    with pytest.raises(ValueError):
        aggregate([a], [0])


def test_each_tensor_and_index_averages_over_its_senders():
    a = {"w": np.array([2.0], np.float32), "s::idx": np.array([0, 2]), "s::val": np.array([1.0, 4.0], np.float32)}
    b = {"s::idx": np.array([2, 5]), "s::val": np.array([8.0, 3.0], np.float32)}
    out = aggregate([a, b], [1, 3])
    assert np.array_equal(out["w"], a["w"])  # only a sent w
    assert out["s::idx"].tolist() == [0, 2, 5]
    np.testing.assert_allclose(out["s::val"], [1.0, (1 * 4.0 + 3 * 8.0) / 4, 3.0])


class _W(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(3))


@pytest.mark.parametrize("bad, why", [
    ({"w": np.ones(3, np.float32), "x": np.ones(1, np.float32)}, "unexpected tensor 'x'"),
    ({"w": np.ones(4, np.float32)}, "expected float32(3,)"),
    ({"w": np.ones(3, np.float64)}, "expected float32(3,)"),
    ({"w": np.array([1, np.nan, 2], np.float32)}, "non-finite"),
    ({"w::idx": np.array([0, 3]), "w::val": np.ones(2, np.float32)}, "out of range"),
    ({"w::idx": np.array([1, 1]), "w::val": np.ones(2, np.float32)}, "repeated"),
    ({"w::val": np.ones(2, np.float32)}, "no indices"),
    ({}, "empty"),
])
def test_check_upload_rejects(bad, why):
    model = _W()
    assert why in check_upload(bad, model, {"w"})
    assert check_upload({"w": np.zeros(3, np.float32)}, model, {"w"}) is None
    assert check_upload({"w::idx": np.array([2]), "w::val": np.ones(1, np.float32)}, model, {"w"}) is None


def test_n_kept_formula():
    assert n_kept(100, 0.5, 32) == 50
    assert n_kept(40, 0.5, 32) == 32  # at least one batch
    assert n_kept(20, 0.5, 32) == 20  # never more than n
    assert n_kept(101, 0.3, 8) == math.ceil(30.3)


def test_select_hardest_keeps_top_scores_in_order_with_index_ties():
    scores = np.array([0.1, 0.9, 0.5, 0.9, 0.2])
    mask = select_hardest(scores, 3)
    assert mask.tolist() == [False, True, True, True, False]
    kept, dropped = scores[mask], scores[~mask]
    assert kept.min() >= dropped.max()
    assert select_hardest(np.array([0.5, 0.5, 0.5]), 2).tolist() == [True, True, False]


def test_garbage_replies_become_client_errors():
    good = parse_reply(1, reply_content({"w": np.ones(2, np.float32)}, {"num-examples": 3.0}))
    assert good.error is None and good.metrics["num-examples"] == 3.0
    no_metrics = parse_reply(2, RecordDict({"arrays": ArrayRecord({})}))
    assert no_metrics.error and "malformed reply" in no_metrics.error
    wrong_type = parse_reply(3, RecordDict({"arrays": ConfigRecord({"x": 1})}))
    assert wrong_type.error is not None
