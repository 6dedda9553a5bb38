"""Server aggregation through Flower's own strategies (``federation.aggregator``).

What travels through Flower (SFPrompt's prompts and tail, an FL client's model or adapters) is
combined by a ``flwr.serverapp.strategy`` object: fedft calls its ``configure_train`` (so the
strategy keeps the state it needs, e.g. FedAdam's current arrays) and its ``aggregate_train`` on
the round's reply messages. The default ``fedavg`` is :class:`MaskedFedAvg`, Flower's FedAvg
extended to the updates fedft's methods send: a tensor averages over the clients that sent it,
and sparse ``name::idx``/``name::val`` pairs average per index (float64 accumulation). The other
aggregators are Flower's classes unchanged; they need every client to send the same dense
tensors. Statistics buffers (readout-norm running moments, the K-FAC second moment) are always
FedAvg-ed: an adaptive server optimiser on a variance could drive it negative.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.app.metadata import Metadata
from flwr.serverapp import strategy as fl
from flwr.supercore.task_identity import TaskIdentity

from fedft import keys
from fedft.errors import FedftError
from fedft.errors import check as _check
from fedft.federated.aggregation import Update, aggregate
from fedft.federated.records import from_arrays, to_arrays
from fedft.options import register_options, table_for
from fedft.registry import Registry

#: name -> factory(options, num_clients) -> a Flower Strategy aggregating on ``keys.AGG_WEIGHT``
AGGREGATORS: Registry[Callable[[Any, int], fl.Strategy]] = Registry("aggregator")
DESCRIPTIONS: dict[str, str] = {}
# Flower's sampling is not used (fedft samples clients itself): accept any number of replies
_COMMON = {"fraction_train": 1.0, "fraction_evaluate": 0.0, "min_train_nodes": 0, "min_evaluate_nodes": 0,
           "min_available_nodes": 0, "weighted_by_key": keys.AGG_WEIGHT,
           "arrayrecord_key": keys.ARRAYS, "configrecord_key": keys.CONFIG}


class MaskedFedAvg(fl.FedAvg):
    """Flower's FedAvg for partial and sparse updates (equal to it on full dense ones)."""

    def aggregate_train(self, server_round: int, replies: Any) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True, validate=False)
        if not valid:
            return None, None
        updates = [from_arrays(m.content[self.arrayrecord_key]) for m in valid]  # type: ignore[arg-type]
        weights = [float(m.content[keys.METRICS][self.weighted_by_key]) for m in valid]  # type: ignore[index, arg-type]
        metrics = self.train_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key)
        return to_arrays(aggregate(updates, weights)), metrics


def register_aggregator(name: str, description: str, options: type | None = None) -> Callable:
    """Register a factory ``(options, num_clients) -> Strategy`` (and its options table)."""
    def deco(factory: Callable[[Any, int], fl.Strategy]) -> Callable[[Any, int], fl.Strategy]:
        if options is not None:
            register_options("federation", name, options)
        DESCRIPTIONS[name] = description
        return AGGREGATORS.register(name)(factory)
    return deco


@dataclass(frozen=True)
class FedProxOptions:
    proximal_mu: float = 0.01  # [D] weight of the clients' proximal term mu/2 ||w - w_global||^2

    def __post_init__(self) -> None:
        _check(self.proximal_mu >= 0, "federation.fedprox.proximal_mu", "a float >= 0")


@dataclass(frozen=True)
class FedOptOptions:
    eta: float = 0.1  # server learning rate (Flower's default)
    eta_l: float = 0.1
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        _check(self.eta > 0 and self.tau > 0, "federation.<fedopt>.eta/tau", "floats > 0")


@dataclass(frozen=True)
class FedAvgMOptions:
    server_learning_rate: float = 1.0
    server_momentum: float = 0.0


@dataclass(frozen=True)
class TrimmedOptions:
    beta: float = 0.2  # fraction cut at each end, per coordinate (Flower's default)

    def __post_init__(self) -> None:
        _check(0 <= self.beta < 0.5, "federation.fedtrimmedavg.beta", "a float in [0, 0.5)")


@dataclass(frozen=True)
class KrumOptions:
    num_malicious_nodes: int = 0
    num_nodes_to_select: int = 1  # multikrum only

    def __post_init__(self) -> None:
        _check(self.num_malicious_nodes >= 0, "federation.krum.num_malicious_nodes", "an integer >= 0")


@dataclass(frozen=True)
class DPFixedOptions:
    noise_multiplier: float = 0.1
    clipping_norm: float = 10.0  # L2 norm of each client's update (upload - download)

    def __post_init__(self) -> None:
        _check(self.noise_multiplier >= 0, "federation.dp_fixed_clipping.noise_multiplier", "a float >= 0")
        _check(self.clipping_norm > 0, "federation.dp_fixed_clipping.clipping_norm", "a float > 0")


register_aggregator("fedavg", "FedAvg weighted by examples; partial and sparse updates averaged over their "
                    "senders (fedft's default)")(lambda o, n: MaskedFedAvg(**_COMMON))
register_aggregator("fedprox", "FedProx: FedAvg plus the clients' proximal term mu/2 ||w - w_global||^2",
                    FedProxOptions)(lambda o, n: fl.FedProx(**_COMMON, proximal_mu=o.proximal_mu))
register_aggregator("fedadam", "FedAdam: Adam on the averaged update at the server", FedOptOptions)(
    lambda o, n: fl.FedAdam(**_COMMON, eta=o.eta, eta_l=o.eta_l, beta_1=o.beta_1, beta_2=o.beta_2, tau=o.tau))
register_options("federation", "fedyogi", FedOptOptions)
register_options("federation", "fedadagrad", FedOptOptions)
register_aggregator("fedyogi", "FedYogi: Yogi on the averaged update at the server")(
    lambda o, n: fl.FedYogi(**_COMMON, eta=o.eta, eta_l=o.eta_l, beta_1=o.beta_1, beta_2=o.beta_2, tau=o.tau))
register_aggregator("fedadagrad", "FedAdagrad: Adagrad on the averaged update at the server")(
    lambda o, n: fl.FedAdagrad(**_COMMON, eta=o.eta, eta_l=o.eta_l, tau=o.tau))
register_aggregator("fedavgm", "FedAvgM: FedAvg with server momentum", FedAvgMOptions)(
    lambda o, n: fl.FedAvgM(**_COMMON, server_learning_rate=o.server_learning_rate,
                            server_momentum=o.server_momentum))
register_aggregator("fedmedian", "FedMedian: coordinate-wise median")(lambda o, n: fl.FedMedian(**_COMMON))
register_aggregator("fedtrimmedavg", "FedTrimmedAvg: coordinate-wise trimmed mean", TrimmedOptions)(
    lambda o, n: fl.FedTrimmedAvg(**_COMMON, beta=o.beta))
register_aggregator("krum", "Krum: the update closest to its n - f - 2 nearest neighbours", KrumOptions)(
    lambda o, n: fl.Krum(**_COMMON, num_malicious_nodes=o.num_malicious_nodes))
register_options("federation", "multikrum", KrumOptions)
register_aggregator("multikrum", "MultiKrum: the mean of the m best Krum updates")(
    lambda o, n: fl.MultiKrum(**_COMMON, num_malicious_nodes=o.num_malicious_nodes,
                              num_nodes_to_select=o.num_nodes_to_select))
register_aggregator("dp_fixed_clipping", "FedAvg with server-side fixed clipping and Gaussian noise "
                    "(central DP)", DPFixedOptions)(
    lambda o, n: fl.DifferentialPrivacyServerSideFixedClipping(
        fl.FedAvg(**_COMMON), o.noise_multiplier, o.clipping_norm, n))


class _Nodes:
    """The part of Flower's Grid that a strategy's ``configure_train`` uses: the sampled nodes."""

    def __init__(self, nodes: Sequence[int]) -> None:
        self.nodes = list(nodes)

    def get_node_ids(self) -> list[int]:
        return self.nodes


@contextlib.contextmanager
def _identity() -> Iterator[None]:
    """Flower builds messages only inside a running app; outside one (the in-process engine) lend
    it a task identity for the duration of a strategy call."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    if saved[0] is None:
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 0, 0, 0
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def reply_message(content: RecordDict, node: int, round: int) -> Message:
    """A train reply from ``node`` carrying ``content`` (what Flower's strategies aggregate)."""
    meta = Metadata(run_id=0, message_id=f"{round}-{node}", src_node_id=node, dst_node_id=0,
                    reply_to_message_id="", group_id=str(round), created_at=time.time(), ttl=3600.0,
                    message_type="train")
    return Message(content=content, metadata=meta)


class Aggregator:
    """One run's Flower strategy, fed fedft's global state and the accepted replies each round."""

    def __init__(self, name: str, options: Any, num_clients: int) -> None:
        self.name = name
        self.strategy = AGGREGATORS.get(name)(options, num_clients)

    @classmethod
    def for_config(cls, cfg: Any) -> Aggregator:
        """The aggregator named by ``cfg.federation.aggregator`` with its options table."""
        name = cfg.federation.aggregator
        options = cfg.federation.options_for(name) if table_for("federation", name) else None
        return cls(name, options, cfg.partition.num_clients)

    @property
    def per_key(self) -> bool:
        """True when each tensor is averaged over the clients that sent it (``fedavg``), so clients
        may send different tensor sets (heterogeneous split points, partial and sparse updates)."""
        return isinstance(self.strategy, MaskedFedAvg)

    def aggregate(self, round: int, current: Update, updates: Sequence[tuple[int, Update, float]],
                  stats: Sequence[str] = ()) -> Update:
        """The new global state from ``current`` (this round's download) and the (client, update,
        weight) triples; ``stats`` names buffers that are always FedAvg-ed."""
        params = [{k: v for k, v in u.items() if k not in stats} for _, u, _ in updates]
        weights = [w for _, _, w in updates]
        self._check_dense(params)
        with _identity():
            self.strategy.configure_train(round, to_arrays({k: v for k, v in current.items() if k not in stats}),
                                          ConfigRecord(), _Nodes([pid for pid, _, _ in updates]))
            replies = [reply_message(RecordDict({keys.ARRAYS: to_arrays(p), keys.METRICS: MetricRecord(
                {keys.AGG_WEIGHT: w})}), pid, round) for (pid, _, w), p in zip(updates, params, strict=True)]
            arrays, _ = self.strategy.aggregate_train(round, replies)
        if arrays is None:
            raise FedftError(f"aggregator {self.name} returned nothing in round {round}")
        out = from_arrays(arrays)
        present = [s for s in stats if any(s in u for _, u, _ in updates)]
        if present:
            out.update(aggregate([{s: u[s] for s in present if s in u} for _, u, _ in updates], weights))
        return out

    def _check_dense(self, params: list[Update]) -> None:
        if self.per_key:
            return
        names = {frozenset(p) for p in params}
        if len(names) > 1 or any(k.endswith(("::idx", "::val")) for p in params for k in p):
            raise FedftError(f"federation.aggregator={self.name} needs every client to send the same dense "
                             "tensors; this method sends partial or sparse updates: use "
                             "federation.aggregator=fedavg")
