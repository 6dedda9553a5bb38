"""Client partitioning: pure functions from a label array to every client's sample indices.

The result is one :class:`Partitions`: the sample indices grouped by client (``order``) and each
client's start (``offsets``), so 100,000 clients cost two integer arrays, not 100,000 objects,
and client ``i``'s indices are a view. Every scheme is vectorised over clients:

- ``iid``: a seeded permutation cut into near-equal shards (``np.array_split``'s sizes).
- ``dirichlet``: Dirichlet(alpha) label skew, re-drawn (at most 11 draws) until every client has
  ``min_size`` samples. The same draws, cuts and retries as flwr-datasets'
  ``DirichletPartitioner`` (seeded, ``self_balancing=False``), so fedft's partitions are the
  ones the Flower ecosystem produces for the same seed; tests/test_scaling.py checks equality.
- ``pathological``: ``labels_per_client`` random classes per client, each class's samples split
  evenly among the clients holding it, as flwr-datasets' ``PathologicalPartitioner`` (``random``
  class assignment; also checked). Classes no client drew are left out (a warning).

With ``min_size = 0`` a client may be left empty: it stays registered but is never sampled
(:func:`fedft.federated.server.ServerRuntime.sample`); with ``min_size >= 1`` an empty or
smaller client is a configuration error. Limits: labels must be non-negative integers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import overload

import numpy as np

from fedft.errors import ConfigError
from fedft.registry import Registry

log = logging.getLogger(__name__)

PARTITIONERS: Registry = Registry("partition scheme")
JSON_CLIENTS_MAX = 10_000  # [D] above this many clients the index file keeps sizes only (+ an .npz)
MAX_DRAWS = 11  # flwr-datasets' DirichletPartitioner: the first draw and 10 retries


class Partitions(Sequence[np.ndarray]):
    """Every client's sorted sample indices: client ``i`` holds ``order[offsets[i]:offsets[i + 1]]``."""

    def __init__(self, order: np.ndarray, offsets: np.ndarray) -> None:
        self.order = np.asarray(order, dtype=np.int64)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.sizes = np.diff(self.offsets)

    @classmethod
    def from_owner(cls, owner: np.ndarray, num_clients: int) -> Partitions:
        """From the client of every sample (``-1``: no client), indices ascending within a client."""
        idx = np.flatnonzero(owner >= 0)
        who = owner[idx]
        order = idx[np.argsort(who, kind="stable")]
        return cls(order, np.concatenate([[0], np.cumsum(np.bincount(who, minlength=num_clients))]))

    @classmethod
    def from_lists(cls, parts: Sequence[np.ndarray]) -> Partitions:
        sizes = [len(p) for p in parts]
        order = np.concatenate([np.sort(np.asarray(p, dtype=np.int64)) for p in parts]) if parts else np.zeros(0)
        return cls(order, np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]))

    def __len__(self) -> int:
        return len(self.sizes)

    @overload
    def __getitem__(self, i: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, i: slice) -> list[np.ndarray]: ...

    def __getitem__(self, i: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"client {i} is outside 0..{n - 1}")
        i = int(i) % n
        return self.order[self.offsets[i]:self.offsets[i + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))

    def nonempty(self) -> np.ndarray:
        """The ids of the clients that hold at least one sample (ascending)."""
        return np.flatnonzero(self.sizes > 0)

    def label_counts(self, labels: np.ndarray) -> np.ndarray:
        """(clients, classes) sample counts per label."""
        n_classes = int(labels.max()) + 1 if len(labels) else 0
        who = np.repeat(np.arange(len(self)), self.sizes)
        flat = np.bincount(who * n_classes + labels[self.order], minlength=len(self) * n_classes)
        return flat.reshape(len(self), n_classes)


@PARTITIONERS.register("iid")
def iid_partition(labels: np.ndarray, num_clients: int, seed: int, **_: object) -> Partitions:
    """A seeded permutation cut into ``num_clients`` near-equal shards."""
    perm = np.random.default_rng(seed).permutation(len(labels))
    q, r = divmod(len(labels), num_clients)
    owner = np.empty(len(labels), dtype=np.int64)
    owner[perm] = np.repeat(np.arange(num_clients), np.r_[np.full(r, q + 1), np.full(num_clients - r, q)])
    return Partitions.from_owner(owner, num_clients)


def _check_fits(labels: np.ndarray, num_clients: int, min_size: int) -> None:
    if min_size * num_clients > len(labels):
        raise ConfigError(
            f"partition.min_size={min_size} x {num_clients} clients exceeds the {len(labels)} training samples; "
            "use fewer clients, a larger data.train_size or partition.min_size=0 (empty clients are never sampled)"
        )


@PARTITIONERS.register("dirichlet")
def dirichlet_partition(
    labels: np.ndarray, num_clients: int, seed: int, alpha: float = 0.5, min_size: int = 0, **_: object
) -> Partitions:
    """Dirichlet(alpha) label skew; re-drawn until every client has at least ``min_size`` samples."""
    _check_fits(labels, num_clients, min_size)
    rng = np.random.default_rng(seed)
    concentration = np.array([float(alpha)], dtype=float).repeat(num_clients)
    by_class = [np.nonzero(labels == k)[0] for k in np.unique(labels)]
    clients = np.arange(num_clients)
    for _draw in range(MAX_DRAWS):
        owner = np.empty(len(labels), dtype=np.int64)
        sizes = np.zeros(num_clients, dtype=np.int64)
        for idx in by_class:
            cuts = (np.cumsum(rng.dirichlet(concentration)) * len(idx)).astype(int)[:-1]
            counts = np.diff(np.clip(np.r_[0, cuts, len(idx)], 0, len(idx)))
            owner[idx] = np.repeat(clients, counts)
            sizes += counts
        if sizes.min() >= min_size:
            return Partitions.from_owner(owner, num_clients)
    raise ConfigError(f"partition 'dirichlet' left a client below partition.min_size={min_size} in {MAX_DRAWS} "
                      "draws; use a larger alpha, fewer clients or partition.min_size=0 (empty clients are never sampled)")


@PARTITIONERS.register("pathological")
def pathological_partition(
    labels: np.ndarray, num_clients: int, seed: int, labels_per_client: int = 2, **_: object
) -> Partitions:
    """Each client gets samples of ``labels_per_client`` classes only."""
    classes = np.unique(labels)
    if labels_per_client > len(classes):
        raise ConfigError(f"partition.labels_per_client={labels_per_client} exceeds the {len(classes)} classes")
    rng = np.random.default_rng(seed)
    held = np.zeros((num_clients, len(classes)), dtype=bool)
    for pid in range(num_clients):  # one draw per client, in order: flwr-datasets' random stream
        held[pid, rng.choice(len(classes), size=labels_per_client, replace=False)] = True
    owner = np.full(len(labels), -1, dtype=np.int64)
    for c, k in enumerate(classes):
        idx, holders = np.nonzero(labels == k)[0], np.flatnonzero(held[:, c])
        if len(holders) > len(idx):
            raise ConfigError(f"class {k} is drawn by {len(holders)} clients but has {len(idx)} samples; "
                              "use fewer clients or a smaller partition.labels_per_client")
        if len(holders):
            q, r = divmod(len(idx), len(holders))
            owner[idx] = np.repeat(holders, np.r_[np.full(r, q + 1), np.full(len(holders) - r, q)])
    unused = [int(k) for c, k in enumerate(classes) if not held[:, c].any()]
    if unused:
        log.warning("partition 'pathological': no client drew classes %s; their samples are unused", unused)
    return Partitions.from_owner(owner, num_clients)


def partition(
    labels: np.ndarray, scheme: str, num_clients: int, seed: int, *, alpha: float = 0.5,
    labels_per_client: int = 2, min_size: int = 0,
) -> Partitions:
    """Partition by ``scheme``. With ``min_size >= 1`` every client must hold at least ``min_size``
    samples; with ``min_size = 0`` empty clients are allowed (never sampled)."""
    fn = PARTITIONERS.get(scheme)
    labels = np.asarray(labels)
    parts = fn(labels, num_clients, seed, alpha=alpha, labels_per_client=labels_per_client, min_size=min_size)
    if not isinstance(parts, Partitions):  # a plugin scheme returning a list of index arrays
        parts = Partitions.from_lists(parts)
    small = np.flatnonzero(parts.sizes < min_size)
    if len(small):
        shown = ", ".join(str(i) for i in small[:10]) + (f" and {len(small) - 10} more" if len(small) > 10 else "")
        raise ConfigError(
            f"partition {scheme!r} left clients {shown} with fewer than {min_size} samples; use fewer clients, "
            "a larger data.train_size, a larger alpha or partition.min_size=0 (empty clients are never sampled)"
        )
    if min_size == 0 and (empty := int((parts.sizes == 0).sum())):
        log.warning("partition %r left %d of %d clients empty; they are registered but never sampled",
                    scheme, empty, num_clients)
    return parts


def save_partitions(path: str | Path, parts: Sequence[np.ndarray], labels: np.ndarray, meta: dict) -> None:
    """Write the index file: sizes and label counts, and every client's indices up to
    :data:`JSON_CLIENTS_MAX` clients; above that the indices and counts go to ``<path>.npz``
    (``order``, ``offsets``, ``label_counts``) and the JSON names it."""
    p = parts if isinstance(parts, Partitions) else Partitions.from_lists(parts)
    path = Path(path)
    counts = p.label_counts(np.asarray(labels))
    doc = {**meta, "num_clients": len(p), "nonempty": int((p.sizes > 0).sum())}
    if len(p) <= JSON_CLIENTS_MAX:
        doc.update(sizes=p.sizes.tolist(), label_counts=counts.tolist(), clients=[c.tolist() for c in p])
    else:
        arrays = path.with_suffix(".npz")
        np.savez_compressed(arrays, order=p.order, offsets=p.offsets, label_counts=counts.astype(np.int32))
        doc.update(arrays=arrays.name, size_min=int(p.sizes.min()), size_max=int(p.sizes.max()),
                   size_mean=float(p.sizes.mean()))
    path.write_text(json.dumps(doc))


def load_partitions(path: str | Path) -> Partitions:
    """Read the index file written by :func:`save_partitions`."""
    path = Path(path)
    doc = json.loads(path.read_text())
    if "arrays" in doc:
        with np.load(path.parent / doc["arrays"]) as z:
            return Partitions(z["order"], z["offsets"])
    return Partitions.from_lists([np.asarray(c, dtype=np.int64) for c in doc["clients"]])
