"""100,000 clients on one machine (issue 18): the vectorised partitioner against flwr-datasets',
its compact form and index file, sampling 10 of 100,000 without per-client objects, node
discovery from a simulation's registration order, and the simulation's one-pass message pickup
against Flower's own sweep."""

from __future__ import annotations

import json
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest

from fedft.accounting import CommLedger
from fedft.config import ExperimentConfig
from fedft.data import partition as P
from fedft.errors import ConfigError
from fedft.federated import engine
from fedft.federated.handlers import handle_hello
from fedft.federated.server import ServerRuntime
from fedft.federated.simulation import fast_pickup, pending_messages

LABELS = np.random.default_rng(3).integers(0, 10, 60_000)


def _flwr(partitioner, labels: np.ndarray, n: int) -> list[np.ndarray]:
    """flwr-datasets' partitions, as fedft read them before it vectorised them."""
    from datasets import Dataset

    partitioner.dataset = Dataset.from_dict({"label": labels.astype(np.int64), "index": np.arange(len(labels))})
    return [np.sort(np.asarray(partitioner.load_partition(i)["index"], dtype=np.int64)) for i in range(n)]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(("n_samples", "n", "alpha", "seed", "min_size"),
                         [(333, 7, 0.05, 0, 0), (1000, 40, 0.5, 1, 2), (500, 10, 5.0, 7, 20), (200, 3, 1.0, 2, 0)])
def test_dirichlet_equals_flwr_datasets(n_samples, n, alpha, seed, min_size):
    from flwr_datasets.partitioner import DirichletPartitioner

    labels = np.random.default_rng(n_samples).integers(0, 10, n_samples)
    ref = _flwr(DirichletPartitioner(num_partitions=n, partition_by="label", alpha=alpha,
                                     min_partition_size=min_size, seed=seed), labels, n)
    assert _same(P.dirichlet_partition(labels, n, seed, alpha=alpha, min_size=min_size), ref)


@pytest.mark.parametrize(("n", "k", "seed"), [(10, 2, 0), (40, 3, 5), (3, 1, 1)])
def test_pathological_equals_flwr_datasets(n, k, seed):
    from flwr_datasets.partitioner import PathologicalPartitioner

    labels = np.random.default_rng(n).integers(0, 6, 500)
    ref = _flwr(PathologicalPartitioner(num_partitions=n, partition_by="label", num_classes_per_partition=k,
                                        seed=seed), labels, n)
    assert _same(P.pathological_partition(labels, n, seed, labels_per_client=k), ref)


@pytest.mark.parametrize(("n_samples", "n"), [(1000, 7), (5, 40), (333, 333)])
def test_iid_equals_permutation_shards(n_samples, n):
    perm = np.random.default_rng(4).permutation(n_samples)
    ref = [np.sort(s) for s in np.array_split(perm, n)]
    assert _same(P.iid_partition(np.zeros(n_samples, dtype=np.int64), n, 4), ref)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_100000_clients_are_two_arrays_covering_the_data(scheme):
    parts = P.partition(LABELS, scheme, 100_000, seed=0, alpha=1.0, min_size=0)
    assert isinstance(parts, P.Partitions) and len(parts) == 100_000
    assert parts.sizes.sum() == len(LABELS) and parts.offsets[-1] == len(LABELS)
    assert np.array_equal(np.sort(parts.order), np.arange(len(LABELS)))  # disjoint, every sample once
    busy = int(parts.nonempty()[0])
    assert np.shares_memory(parts[busy], parts.order)  # a client's indices are a view, not a copy
    assert np.all(np.diff(parts[busy]) > 0)
    again = P.partition(LABELS, scheme, 100_000, seed=0, alpha=1.0, min_size=0)
    assert np.array_equal(again.order, parts.order) and np.array_equal(again.offsets, parts.offsets)
    other = P.partition(LABELS, scheme, 100_000, seed=1, alpha=1.0, min_size=0)
    assert not np.array_equal(other.order, parts.order)


def test_empty_clients_need_min_size_zero():
    parts = P.partition(LABELS[:50], "iid", 80, seed=0, min_size=0)
    assert (parts.sizes == 0).sum() == 30
    for scheme, n in (("dirichlet", 150), ("iid", 80)):  # no draw fits / more clients than samples
        with pytest.raises(ConfigError, match="partition.min_size=0"):
            P.partition(LABELS[:200 if scheme == "dirichlet" else 50], scheme, n, seed=0, alpha=0.1, min_size=1)


def test_index_file_is_compact_above_the_json_limit(tmp_path, monkeypatch):
    parts = P.partition(LABELS[:1000], "dirichlet", 12, seed=0, alpha=0.5, min_size=1)
    P.save_partitions(tmp_path / "small.json", parts, LABELS[:1000], {"scheme": "dirichlet"})
    doc = json.loads((tmp_path / "small.json").read_text())
    assert len(doc["clients"]) == 12 and np.array_equal(doc["sizes"], parts.sizes)
    monkeypatch.setattr(P, "JSON_CLIENTS_MAX", 10)
    P.save_partitions(tmp_path / "big.json", parts, LABELS[:1000], {"scheme": "dirichlet"})
    doc = json.loads((tmp_path / "big.json").read_text())
    assert "clients" not in doc and doc["arrays"] == "big.npz" and doc["num_clients"] == 12
    back = P.load_partitions(tmp_path / "big.json")
    assert _same(back, parts) and _same(P.load_partitions(tmp_path / "small.json"), parts)
    with np.load(tmp_path / "big.npz") as z:
        assert np.array_equal(z["label_counts"].sum(1), parts.sizes)


def _sampler(n: int, k: int, eligible: np.ndarray) -> ServerRuntime:
    """A ServerRuntime with only what sample() reads (no model, no data)."""
    from fedft.federated.client import strategy_for

    cfg = ExperimentConfig.from_overrides([f"partition.num_clients={n}", f"federation.clients_per_round={k}"])
    srv = ServerRuntime.__new__(ServerRuntime)
    srv.cfg, srv.strategy, srv.eligible = cfg, strategy_for(cfg), eligible
    return srv


def test_sampling_10_of_100000_is_reproducible_and_allocates_no_per_client_objects():
    eligible = np.flatnonzero(np.random.default_rng(0).random(100_000) < 0.5)  # half the clients hold data
    srv = _sampler(100_000, 10, eligible)
    srv.sample(1)  # warm imports
    tracemalloc.start()
    picked = srv.sample(1)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 100_000  # bytes: 100,000 Python ints would take > 2.8 MB, one int64 array 0.8 MB
    assert picked == srv.sample(1) and picked != srv.sample(2)
    assert len(set(picked)) == 10 and set(picked) <= set(eligible.tolist())


def test_sampling_with_every_client_holding_data_is_unchanged():
    srv = _sampler(1000, 10, np.arange(1000))
    old = np.random.default_rng([0, 3, 7]).choice(1000, size=10, replace=False)  # the draw before issue 18
    assert sorted(srv.sample(3)) == sorted(int(p) for p in old)


class _FakeGrid:
    """A grid whose nodes answer the hello query with their partition id; ``state.nodes`` is in
    ``registered`` order (Flower's in-memory link state) unless ``with_state`` is False."""

    def __init__(self, pid_of_node: dict[int, int], registered: list[int], with_state: bool = True) -> None:
        self.pid_of_node, self.sent = pid_of_node, 0
        if with_state:
            self.state = SimpleNamespace(nodes={node: None for node in registered})

    def get_node_ids(self) -> list[int]:
        return list(self.pid_of_node)

    def send_and_receive(self, msgs, timeout=None):
        self.sent += len(msgs)
        n = len(self.pid_of_node)
        return [SimpleNamespace(has_error=lambda: False, metadata=SimpleNamespace(src_node_id=m.metadata.dst_node_id),
                                content=handle_hello(self.pid_of_node[m.metadata.dst_node_id], n)) for m in msgs]


@pytest.fixture
def task_identity(monkeypatch):
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_run_id", 123), ("_task_id", 1), ("_node_id", SUPERLINK_NODE_ID)):
        monkeypatch.setattr(TaskIdentity, attr, value)


@pytest.mark.parametrize("layout", ["simulation", "shuffled", "deployment"])
def test_discover_maps_partitions_to_nodes(task_identity, layout):
    n = 1000
    nodes = np.random.default_rng(1).choice(2**40, size=n, replace=False).tolist()
    order = list(range(n)) if layout == "simulation" else np.random.default_rng(2).permutation(n).tolist()
    pid_of_node = {nodes[i]: order[i] for i in range(n)}  # node i serves partition order[i]
    grid = _FakeGrid(pid_of_node, nodes if layout != "shuffled" else sorted(nodes), with_state=layout != "deployment")
    cfg = ExperimentConfig.from_overrides([f"partition.num_clients={n}"])
    node_of = engine.discover(grid, SimpleNamespace(cfg=cfg, ledger=CommLedger()), timeout=30)
    assert node_of == {pid: node for node, pid in pid_of_node.items()}
    if layout == "simulation":
        assert grid.sent <= engine.VERIFY_NODES + 2  # a few confirm the registration order
    else:
        assert grid.sent >= n  # every node was asked


def _link_state(n_nodes: int):
    from flwr.proto.task_pb2 import Task
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.linkstate import LinkStateFactory
    from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
    from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supercore.run import Run
    from flwr.superlink.federation import NoOpFederationManager

    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    run = Run.create_empty(run_id=123)
    run.primary_task_id, run.federation_id = 5, NOOP_FEDERATION_ID
    state = factory.state()
    state.run_ids[123], state.task_store[5] = RunRecord(run=run), Task(task_id=5, run_id=123)
    return state, vce_api._register_nodes(n_nodes, factory)


def test_pending_messages_equal_flowers_sweep(task_identity):
    from flwr.app import ConfigRecord, Message, MessageType, RecordDict
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.superlink.grid import InMemoryGrid

    state, nodes = _link_state(30)
    ids = list(nodes)
    grid = InMemoryGrid.__new__(InMemoryGrid)
    grid.state = grid_state = state
    targets = [ids[7], ids[2], ids[7], ids[29], ids[0]]  # node 7 gets two messages
    grid.push_messages([Message(content=RecordDict({"c": ConfigRecord({"i": i})}), dst_node_id=t,
                                message_type=MessageType.TRAIN) for i, t in enumerate(targets)])

    def flower_sweep() -> list[str]:
        return [m.metadata.message_id for nid in nodes for m in grid_state.get_message_ins(node_id=nid, limit=1)]

    def undeliver() -> None:
        for m in state.message_ins_store.values():
            m.metadata.delivered_at = ""

    ours = [m.metadata.message_id for m in pending_messages(state, nodes)]
    assert len(ours) == 4 and all(state.message_ins_store[i].metadata.delivered_at for i in ours)
    undeliver()
    assert ours == flower_sweep()
    undeliver()
    flower_sweep()
    second = flower_sweep()  # node 7's second message
    undeliver()
    pending_messages(state, nodes)
    assert [m.metadata.message_id for m in pending_messages(state, nodes)] == second and len(second) == 1
    original = vce_api.add_messages_to_queue
    with fast_pickup():
        assert vce_api.add_messages_to_queue is not original
    assert vce_api.add_messages_to_queue is original
