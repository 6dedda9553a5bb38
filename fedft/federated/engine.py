"""Two ways to deliver rounds: Flower messages (simulation or deployment) and direct calls
(the in-process engine: same records, same handlers, same body service, no Flower runtime)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from fedft import keys
from fedft.accounting import Direction, Phase
from fedft.errors import FedftError
from fedft.federated.handlers import handle_train
from fedft.federated.loop import Dispatch, run_rounds
from fedft.federated.records import from_arrays, record_content
from fedft.federated.server import ClientResult, ServerRuntime
from fedft.resources.timeline import Timeline

log = logging.getLogger(__name__)


def parse_reply(pid: int, content: RecordDict) -> ClientResult:
    """A reply's update and metrics; anything malformed becomes an error for that client only."""
    try:
        update = from_arrays(content[keys.ARRAYS])  # type: ignore[arg-type]
        metrics = {k: float(v) for k, v in content[keys.METRICS].items()}  # type: ignore[union-attr, arg-type]
        timeline = Timeline.from_record(content.metric_records.get(keys.TIMELINE))
        return ClientResult(pid, update={k: np.asarray(v) for k, v in update.items()}, metrics=metrics,
                            timeline=timeline)
    except Exception as e:  # noqa: BLE001 - a client's garbage must not stop the server
        return ClientResult(pid, error=f"malformed reply: {type(e).__name__}: {e}")


def inprocess_dispatch(srv: ServerRuntime) -> Dispatch:
    """Call each client's handler directly, one after another, with the records Flower would carry."""
    states: dict[int, dict] = {}

    def dispatch(rnd: int, pids: list[int], contents: RecordDict | Callable[[int], RecordDict]) -> list[ClientResult]:
        out = []
        for pid in pids:
            content = contents(pid) if callable(contents) else contents
            record_content(srv.ledger, rnd, str(pid), content, Direction.DOWN)
            try:
                reply = handle_train(content, pid, states.setdefault(pid, {}))
            except Exception as e:  # noqa: BLE001
                log.warning("client %d failed: %s", pid, e)
                out.append(ClientResult(pid, error=f"{type(e).__name__}: {e}"))
                continue
            record_content(srv.ledger, rnd, str(pid), reply, Direction.UP)
            out.append(parse_reply(pid, reply))
        return out

    return dispatch


def run_inprocess(srv: ServerRuntime, progress: bool = True) -> dict[str, Any]:
    """The whole run without Flower's runtime (quick CPU checks and tests)."""
    try:
        srv.start_body_service()
        return run_rounds(srv, inprocess_dispatch(srv), progress)
    finally:
        srv.stop()


def discover(grid: Any, srv: ServerRuntime, timeout: float = 600.0) -> dict[int, int]:
    """Wait for the nodes and learn which serves each partition; pid -> node id.

    In Flower's in-process simulation the registration order gives the map, confirmed by a few
    nodes (:func:`_registered`); elsewhere (deployment, ``flwr run``) every node is asked its
    partition id (one ordinary Flower round trip). A federation whose nodes were started for a
    different number of partitions (Flower's default local simulation has 2 SuperNodes) stops the
    run at once with the setting to pass."""
    want = srv.cfg.partition.num_clients
    deadline = time.time() + timeout
    while not list(grid.get_node_ids()):
        if time.time() > deadline:
            raise TimeoutError(f"no node connected in {timeout:.0f} s")
        time.sleep(1.0)
    node_of = _registered(grid, srv, want, deadline, timeout)
    if node_of is None:
        node_of = _hello(grid, srv, list(grid.get_node_ids()), want, timeout)
        known = set(node_of.values())
        while len(node_of) < want and time.time() < deadline:
            time.sleep(1.0)
            new = [n for n in grid.get_node_ids() if n not in known]
            if new:
                node_of.update(_hello(grid, srv, new, want, timeout))
                known = set(node_of.values())
    missing = sorted(set(range(want)) - set(node_of))
    if missing:
        log.warning("no node serves partitions %s; they will count as failed clients", missing)
    return node_of


VERIFY_NODES = 16  # [D] nodes (besides the first and the last) that confirm a simulation's map


def _registered(grid: Any, srv: ServerRuntime, want: int, deadline: float, timeout: float) -> dict[int, int] | None:
    """pid -> node id from Flower's in-memory link state (``run_simulation``), or None.

    Flower's simulation registers SuperNode ``i`` (node config ``partition-id = i``) as the
    ``i``-th node of ``grid.state.nodes`` (flwr 1.41, ``vce_api._register_nodes``), so the map
    needs no message to each of 100,000 nodes. The first, the last and :data:`VERIFY_NODES`
    seeded nodes answer the hello to confirm it; any disagreement (another Flower) returns None
    and every node is asked."""
    nodes = getattr(getattr(grid, "state", None), "nodes", None)
    if not isinstance(nodes, dict):
        return None
    seen, still = -1, 0.0
    while time.time() < deadline:  # registration runs beside the ServerApp: wait until it settles
        n = len(nodes)
        if n == seen and (n >= want or still >= 5.0):
            break
        still, seen = (still + 0.2 if n == seen else 0.0), n
        time.sleep(0.2)
    ids = list(nodes)
    if len(ids) != want:
        return None  # the hello path names the setting to pass
    node_of = dict(enumerate(ids))
    extra = np.random.default_rng(0).choice(want, size=min(VERIFY_NODES, want), replace=False)
    check = sorted({0, want - 1, *(int(p) for p in extra)})
    answered = _hello(grid, srv, [node_of[p] for p in check], want, timeout)
    if answered != {p: node_of[p] for p in check}:
        log.warning("the simulation's nodes are not in partition order; asking every node its partition id")
        return None
    return node_of


def _hello(grid: Any, srv: ServerRuntime, nodes: list[int], want: int, timeout: float) -> dict[int, int]:
    msgs = [Message(content=RecordDict({keys.CONFIG: ConfigRecord({})}), dst_node_id=node,
                    message_type=f"{MessageType.QUERY}.{keys.QUERY_HELLO}") for node in nodes]
    node_of: dict[int, int] = {}
    for rep in grid.send_and_receive(msgs, timeout=timeout):
        if rep.has_error():
            log.warning("node %s did not answer hello: %s", rep.metadata.src_node_id, rep.error.reason)
            continue
        metrics = rep.content[keys.METRICS]
        pid, total = int(metrics[keys.PARTITION_ID]), int(metrics.get(keys.NUM_PARTITIONS, -1))  # type: ignore[union-attr, arg-type]
        if total not in (-1, want):
            raise FedftError(f"the federation's nodes hold {total} partitions but partition.num_clients is {want}: "
                             f"pass --federation-config 'num-supernodes={want} client-resources-num-cpus=1' "
                             f"to flwr run, or --run-config 'partition.num-clients={total}'")
        record_content(srv.ledger, 0, str(pid), rep.content, Direction.UP, Phase.SETUP)
        node_of[pid] = rep.metadata.src_node_id
    return node_of


def flower_dispatch(grid: Any, srv: ServerRuntime, node_of: dict[int, int], timeout: float = 3600.0) -> Dispatch:
    """One train message per sampled client; replies matched back by node id."""
    pid_of = {node: pid for pid, node in node_of.items()}

    def dispatch(rnd: int, pids: list[int], contents: RecordDict | Callable[[int], RecordDict]) -> list[ClientResult]:
        msgs, results = [], {}
        for pid in pids:
            if pid not in node_of:
                results[pid] = ClientResult(pid, error="no node serves this partition")
                continue
            content = contents(pid) if callable(contents) else contents
            record_content(srv.ledger, rnd, str(pid), content, Direction.DOWN)
            msgs.append(Message(content=content, dst_node_id=node_of[pid], message_type=MessageType.TRAIN,
                                group_id=str(rnd)))
        for rep in grid.send_and_receive(msgs, timeout=timeout):
            pid = pid_of.get(rep.metadata.src_node_id)
            if pid is None:
                continue
            if rep.has_error():
                results[pid] = ClientResult(pid, error=rep.error.reason)
                continue
            record_content(srv.ledger, rnd, str(pid), rep.content, Direction.UP)
            results[pid] = parse_reply(pid, rep.content)
        return [results.get(pid, ClientResult(pid, error="no reply before the timeout")) for pid in pids]

    return dispatch


def serve(grid: Any, srv: ServerRuntime, progress: bool = True) -> dict[str, Any]:
    """The ServerApp's main: discover nodes, start the body service, run the rounds, stop."""
    from fedft.deploy_config import body_service_args

    try:
        node_of = discover(grid, srv)  # a Flower round trip before any gRPC server starts
        srv.start_body_service(**body_service_args(srv.cfg.deploy))  # type: ignore[arg-type]
        dispatch = flower_dispatch(grid, srv, node_of, timeout=srv.cfg.deploy.round_timeout_s)
        return run_rounds(srv, dispatch, progress)
    finally:
        srv.stop()
