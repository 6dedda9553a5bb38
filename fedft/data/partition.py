"""Client partitioning: pure functions from a label array to per-client index arrays.

IID is a seeded permutation cut into near-equal shards. Dirichlet label skew and pathological
(k labels per client) use flwr-datasets' partitioners over an in-memory label column, so fedft's
partitions are the ones the Flower ecosystem produces for the same seed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fedft.errors import ConfigError
from fedft.registry import Registry

PARTITIONERS: Registry = Registry("partition scheme")


@PARTITIONERS.register("iid")
def iid_partition(labels: np.ndarray, num_clients: int, seed: int, **_: object) -> list[np.ndarray]:
    """A seeded permutation cut into ``num_clients`` near-equal shards."""
    perm = np.random.default_rng(seed).permutation(len(labels))
    return [np.sort(p) for p in np.array_split(perm, num_clients)]


def _flwr_partition(partitioner: object, labels: np.ndarray, num_clients: int) -> list[np.ndarray]:
    from datasets import Dataset  # imported lazily: ~3 s, and only the partitioner needs it

    ds = Dataset.from_dict({"label": labels.astype(np.int64), "index": np.arange(len(labels))})
    partitioner.dataset = ds  # type: ignore[attr-defined]
    return [np.sort(np.asarray(partitioner.load_partition(i)["index"], dtype=np.int64))  # type: ignore[attr-defined]
            for i in range(num_clients)]


@PARTITIONERS.register("dirichlet")
def dirichlet_partition(
    labels: np.ndarray, num_clients: int, seed: int, alpha: float = 0.5, min_size: int = 0, **_: object
) -> list[np.ndarray]:
    """Dirichlet(alpha) label skew; re-drawn until every client has at least ``min_size`` samples."""
    from flwr_datasets.partitioner import DirichletPartitioner

    if min_size * num_clients > len(labels):
        raise ConfigError(
            f"partition.min_size={min_size} x {num_clients} clients exceeds the {len(labels)} training samples"
        )
    p = DirichletPartitioner(num_partitions=num_clients, partition_by="label", alpha=alpha,
                             min_partition_size=min_size, seed=seed)
    return _flwr_partition(p, labels, num_clients)


@PARTITIONERS.register("pathological")
def pathological_partition(
    labels: np.ndarray, num_clients: int, seed: int, labels_per_client: int = 2, **_: object
) -> list[np.ndarray]:
    """Each client gets samples of ``labels_per_client`` classes only."""
    from flwr_datasets.partitioner import PathologicalPartitioner

    n_classes = len(np.unique(labels))
    if labels_per_client > n_classes:
        raise ConfigError(f"partition.labels_per_client={labels_per_client} exceeds the {n_classes} classes")
    p = PathologicalPartitioner(num_partitions=num_clients, partition_by="label",
                                num_classes_per_partition=labels_per_client, seed=seed)
    return _flwr_partition(p, labels, num_clients)


def partition(
    labels: np.ndarray, scheme: str, num_clients: int, seed: int, *, alpha: float = 0.5,
    labels_per_client: int = 2, min_size: int = 0,
) -> list[np.ndarray]:
    """Partition by ``scheme``; every client must end up with at least ``min_size`` samples."""
    fn = PARTITIONERS.get(scheme)
    parts = fn(labels, num_clients, seed, alpha=alpha, labels_per_client=labels_per_client, min_size=min_size)
    small = [i for i, p in enumerate(parts) if len(p) < max(min_size, 1)]
    if small:
        raise ConfigError(
            f"partition {scheme!r} left clients {small} with fewer than {max(min_size, 1)} samples; "
            "use fewer clients, a larger data.train_size, a larger alpha or a smaller partition.min_size"
        )
    return parts


def save_partitions(path: str | Path, parts: list[np.ndarray], labels: np.ndarray, meta: dict) -> None:
    """Write the index file: indices per client plus sizes and label counts, for humans and clients."""
    n_classes = int(labels.max()) + 1 if len(labels) else 0
    doc = {
        **meta,
        "sizes": [len(p) for p in parts],
        "label_counts": [np.bincount(labels[p], minlength=n_classes).tolist() for p in parts],
        "clients": [p.tolist() for p in parts],
    }
    Path(path).write_text(json.dumps(doc))


def load_partitions(path: str | Path) -> list[np.ndarray]:
    """Read the index file written by :func:`save_partitions`."""
    doc = json.loads(Path(path).read_text())
    return [np.asarray(c, dtype=np.int64) for c in doc["clients"]]
