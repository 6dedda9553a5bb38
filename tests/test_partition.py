"""Partitions are disjoint, cover every index, are deterministic and respect the minimum size."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedft.data.partition import load_partitions, partition, save_partitions
from fedft.errors import ConfigError

LABELS = np.random.default_rng(0).integers(0, 10, 1000)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "pathological"])
def test_disjoint_cover_deterministic(scheme):
    parts = partition(LABELS, scheme, 10, seed=1, alpha=0.5, labels_per_client=2, min_size=5)
    allidx = np.concatenate(parts)
    assert len(parts) == 10
    assert len(allidx) == len(np.unique(allidx))  # disjoint
    if scheme != "pathological":  # pathological may leave classes no client draws
        assert sorted(allidx.tolist()) == list(range(len(LABELS)))
    again = partition(LABELS, scheme, 10, seed=1, alpha=0.5, labels_per_client=2, min_size=5)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition(LABELS, scheme, 10, seed=2, alpha=0.5, labels_per_client=2, min_size=5)
    assert any(not np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_iid_sizes_balanced():
    sizes = [len(p) for p in partition(LABELS, "iid", 7, seed=0)]
    assert max(sizes) - min(sizes) <= 1


def test_dirichlet_skew_and_min_size():
    parts = partition(LABELS, "dirichlet", 10, seed=0, alpha=0.1, min_size=20)
    assert min(len(p) for p in parts) >= 20
    # with alpha = 0.1 most clients are dominated by few labels
    top_share = [np.bincount(LABELS[p], minlength=10).max() / len(p) for p in parts]
    assert np.median(top_share) > 0.4


def test_pathological_k_labels():
    parts = partition(LABELS, "pathological", 10, seed=0, labels_per_client=2)
    assert all(len(np.unique(LABELS[p])) <= 2 for p in parts)


def test_impossible_min_size_is_a_config_error():
    with pytest.raises(ConfigError, match="min_size"):
        partition(LABELS, "dirichlet", 10, seed=0, min_size=200)


def test_index_file_roundtrip(tmp_path):
    parts = partition(LABELS, "iid", 4, seed=0)
    save_partitions(tmp_path / "p.json", parts, LABELS, {"scheme": "iid"})
    back = load_partitions(tmp_path / "p.json")
    assert all(np.array_equal(a, b) for a, b in zip(parts, back, strict=True))
    doc = json.loads((tmp_path / "p.json").read_text())
    assert doc["sizes"] == [250] * 4 and sum(map(sum, doc["label_counts"])) == 1000
