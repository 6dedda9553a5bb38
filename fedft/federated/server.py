"""The server side of a federated run: global state, body service, aggregation and evaluation.

The server holds the whole pre-trained model. For split strategies it serves the body over the
gRPC body service (in the strategy's body mode) and keeps the global client-side state (prompts
+ tail, or head + tail); for FL strategies the global state is every tensor the method trains.
The server's model is the source of truth: each round's download is cut from it
(:mod:`fedft.federated.payload`), and the aggregator's combination of the accepted uploads
(:mod:`fedft.federated.aggregators`, weighted by the strategy) is decoded into it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import RecordDict

from fedft import keys
from fedft.accounting import CommLedger, Phase
from fedft.config import ExperimentConfig
from fedft.data.datasets import encode, load_raw
from fedft.data.partition import save_partitions
from fedft.errors import FedftError
from fedft.federated.aggregation import Update
from fedft.federated.aggregators import Aggregator
from fedft.federated.checkpoint import Checkpoint
from fedft.federated.client import partitions_for, split_parts, strategy_for
from fedft.federated.payload import check_upload, download, extra_buffers, receive
from fedft.federated.records import train_content
from fedft.federated.update_codec import decode_reply
from fedft.flops import FlopsMeter
from fedft.gen_eval import GenerativeEval
from fedft.methods.base import state_tensors
from fedft.model import build_model
from fedft.outputs import PARTITIONS, RunDir
from fedft.recipes.apply import recipe_for
from fedft.resources.clock import BodyCost, RoundClock
from fedft.resources.timeline import Timeline
from fedft.split import SplitSpec
from fedft.split.cuts import CutNames, body_flops, check_supported, cut_bodies
from fedft.split.served import served
from fedft.train import EvalResult, evaluate, make_optimizer

log = logging.getLogger(__name__)


@dataclass
class ClientResult:
    """What came back from one client in one round (``error`` set when it failed)."""

    pid: int
    update: Update | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    timeline: Timeline | None = None  # the client's exchanges and FLOPs (time model)


class ServerRuntime:
    """Everything the server keeps for one run."""

    clock: RoundClock | None = None  # the simulated clock ([resources]); None when it is off
    eligible: np.ndarray | None = None  # the clients holding data, which sample() draws from (None: all)

    def __init__(self, cfg: ExperimentConfig, run: RunDir) -> None:
        self.cfg, self.run = cfg, run
        self.strategy = strategy_for(cfg)
        self.aggregator = Aggregator.for_config(cfg)
        self.clock = round_clock(cfg, self.strategy)  # bad profiles fail here, before any loading
        check_supported(cfg, self.strategy, self.aggregator.per_key)  # heterogeneous cuts, before any work
        recipe_for(cfg)  # a recipe that cannot run per client fails here, before any round
        raw = load_raw(cfg.data, cfg.seed)
        self.model, self.method, pre = build_model(cfg, raw.num_labels)
        self.test = encode(raw, "test", pre, cfg.data.max_length)
        self.val = encode(raw, "val", pre, cfg.data.max_length) if len(raw.val_y) else None
        self.gen_eval = GenerativeEval.for_run(cfg, pre, list(raw.train_x))
        labels = np.asarray(raw.train_y)
        self.partitions = partitions_for(cfg, labels)
        save_partitions(run.file(PARTITIONS), self.partitions, labels,
                        {"scheme": cfg.partition.scheme, "seed": cfg.seed, "alpha": cfg.partition.alpha})
        self.eligible = self.partitions.nonempty()  # all of them unless partition.min_size = 0
        self._trainable = frozenset(n for n, p in self.model.named_parameters() if p.requires_grad)
        self.parts = split_parts(cfg, self.model)
        if cfg.resources.enabled and cfg.resources.memory_check:  # refuse client parts that do not fit
            from fedft.resources.memory import check_run_memory, training_batch

            check_run_memory(cfg, self.model, training_batch(cfg, raw, pre))
        self.global_update: Update = {}
        self.cut_names = CutNames.for_server(cfg, self.strategy, self.model, self._trainable)
        self._cut()
        self.ledger = CommLedger()
        self.service: Any = None
        self._body_flops: tuple[float, float] | None = None  # (fwd, bwd) per position
        self._pending_optimizer: dict | None = None
        self.resumed: Checkpoint | None = None

    def _cut(self) -> None:
        """The next download from the server's model (the source of truth), and what a reply
        may contain: tensors of the download, dense or as sparse pairs. With heterogeneous cuts,
        what any client trains (each client gets its part of it: :meth:`round_content`)."""
        if self.cut_names is None:
            self.global_update = download(self.method, self.model, self.parts)
        else:
            self.global_update = self.cut_names.restrict(download(self.method, self.model), extra_buffers(self.model))
        self.allowed = {k.split("::")[0] for k in self.global_update}

    def start_round(self, round: int) -> None:
        """The method's round hook on the server's model (LT-SFT selects its mask here), then
        the round's download."""
        self.method.on_round_start(self.model, round)
        self._cut()

    def finalize(self) -> bool:
        """The method's ``finalize`` (merge, interpolate, prune) on the final global model; True
        when it ran and may have changed the outputs."""
        from fedft.methods import BaseMethod

        if type(self.method).finalize is BaseMethod.finalize:
            return False
        try:
            self.method.finalize(self.model)
        except (RuntimeError, ValueError) as e:  # e.g. Antidote without a calibration set at the server
            log.warning("finalize of %s skipped on the server: %s", self.cfg.method.name, e)
            return False
        return True

    # ---- body service --------------------------------------------------------------------------

    def start_body_service(self, host: str = "127.0.0.1", port: int = 0,
                           tls: tuple[bytes, bytes] | None = None, limits: Any = None) -> None:
        """Serve the body (split strategies only); frozen for SFPrompt, trainable for SL/SFL."""
        if self.parts is None:
            return
        from fedft.body.service import new_token, start_body_service

        train_cfg = self.cfg.train

        def make_opt(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
            holder = torch.nn.ParameterList(params)
            return make_optimizer(holder, train_cfg)

        if self.strategy.body_mode == "frozen":
            self.parts.freeze_body()
        self.service = start_body_service(
            self.parts.body, token=new_token(), mode=self.strategy.body_mode,
            make_optimizer=None if self.strategy.body_mode == "frozen" else make_opt,
            host=host, port=port, tls=tls, max_workers=max(8, self.cfg.partition.num_clients),
            cuts=cut_bodies(self.model, self.parts.spec),  # each client's Open names its cut
            limits=limits,  # fedft.body.limits.BodyLimits (deploy.body_max_*); None: its [D] defaults
        )
        if self.cut_names is not None:  # freezing the service's own body froze blocks clients train
            self.cut_names.apply(self.model)
        if self._pending_optimizer is not None:
            self.service.service.load_optimizer_state(self._pending_optimizer)
            self._pending_optimizer = None

    # ---- checkpoints -----------------------------------------------------------------------------

    def checkpoint(self, round: int, counters: dict[str, float]) -> Checkpoint:
        """What a resumed run needs after ``round`` (see :mod:`fedft.federated.checkpoint`)."""
        trains_body = self.parts is not None and self.strategy.body_mode != "frozen"
        body = ({k: v.detach().numpy().copy() for k, v in self.parts.body.state_dict().items()}  # type: ignore[union-attr]
                if trains_body else None)
        opt = self.service.service.optimizer_state() if trains_body and self.service is not None else None
        return Checkpoint(round, dict(self.global_update), body, opt, CommLedger(self.ledger.events), counters)

    def resume_from_dir(self) -> None:
        """Restore the run directory's last checkpoint, if it has one."""
        from fedft.federated.checkpoint import load

        ckpt = load(self.run.path)
        if ckpt is not None:
            self.resume_from(ckpt)

    def resume_from(self, ckpt: Checkpoint) -> None:
        """Restore the state saved after round ``ckpt.round`` (before the body service starts)."""
        names = set(state_tensors(self.model))
        if check_upload(ckpt.global_update, self.model, names) is not None:
            raise FedftError("the checkpoint does not match this run's model; resume with the run's own config")
        receive(self.method, self.model, ckpt.global_update)
        self._cut()
        self.ledger = CommLedger(ckpt.ledger.events)
        if ckpt.body is not None and self.parts is not None:
            self.parts.body.load_state_dict({k: torch.from_numpy(v) for k, v in ckpt.body.items()})
        self._pending_optimizer = ckpt.body_optimizer
        self.resumed = ckpt

    def round_extra(self) -> dict[str, str | int | bytes | float]:
        """Per-round config entries for clients: where the body service is and its token."""
        if self.service is None:
            return {}
        extra: dict[str, str | int | bytes | float] = {keys.BODY_ADDRESS: self.service.address,
                                                       keys.BODY_TOKEN: self.service.token}
        if self.clock is not None:
            extra[keys.SIM_BODY_FLOPS] = self.body_flops_per_token()
        from fedft.deploy_config import body_root_cert

        root = body_root_cert(self.cfg.deploy)  # the CA certificate, when the body runs with TLS
        if root is not None:
            extra[keys.BODY_ROOT_CERT] = root
        return extra

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop(grace=1.0)
            self.service = None

    # ---- rounds ----------------------------------------------------------------------------------

    def sample(self, round: int) -> list[int]:
        """The clients of ``round``: K of N uniformly without replacement (all when K = 0 or K >= N),
        N counting the clients that hold data; no per-client objects (numpy's Floyd sampling is O(K)
        for K <= N/50)."""
        n, k = self.cfg.partition.num_clients, self.cfg.federation.clients_per_round
        rng = np.random.default_rng([self.cfg.seed, round, 7])
        if self.clock is not None:  # among the clients online now, with over-selection
            return self.strategy.order(self.clock.sample(0 if k >= n else k, rng, self.eligible), rng)
        pool = np.arange(n) if self.eligible is None else self.eligible  # clients holding data
        pids = pool if k == 0 or k >= len(pool) else pool[rng.choice(len(pool), size=k, replace=False)]
        return self.strategy.order([int(p) for p in pids], rng)

    def accept(self, res: ClientResult) -> bool:
        """Validate one reply against the expected update; a bad one is dropped, not fatal."""
        if res.error is None and res.update is not None:
            allowed = (self.allowed if self.cut_names is None
                       else self.cut_names.allowed(res.pid, extra_buffers(self.model)))
            res.error = (decode_reply(res, self.cfg.federation.params_wire, self.global_update)  # deltas -> values
                         or check_upload(res.update, self.model, allowed))
        if res.error is None and not res.metrics.get(keys.NUM_EXAMPLES, 0) > 0:
            res.error = f"reply has no positive {keys.NUM_EXAMPLES}"
        if res.error is not None:
            log.warning("round: dropping client %s: %s", res.pid, res.error)
            return False
        return True

    def aggregate(self, round: int, results: list[ClientResult]) -> None:
        """The aggregator's combination of the accepted updates, weighted by the strategy; with
        none accepted the global state stays."""
        good = [r for r in results if r.error is None]
        if good:
            triples = [(r.pid, r.update, self.strategy.weight(r.metrics)) for r in good]
            stats = extra_buffers(self.model)
            receive(self.method, self.model, self.aggregator.aggregate(round, self.global_update, triples, stats))  # type: ignore[arg-type]
            self._cut()
        if self.service is not None and self.strategy.body_mode == "per_client":
            weights = {str(r.pid): self.strategy.weight(r.metrics) for r in good}
            if weights:
                self.service.service.aggregate(weights)
            else:
                self.service.service.reset()

    def collect_service_ledger(self, round: int) -> None:
        """Move the body service's events of ``round`` into the run ledger."""
        if self.service is None:
            return
        self.ledger.extend(e for e in self.service.service.ledger if e.round == round)

    def body_flops_per_token(self) -> float:
        """Server FLOPs per sequence position sent through the body (forward + backward), measured
        once by FlopCounterMode on two test samples. Exact for fixed-length inputs (images);
        for variable-length text an estimate, since attention's cost grows with T^2."""
        if self.parts is None:
            return 0.0
        if self._body_flops is None:
            meter = FlopsMeter(cache=False)
            batch = self.test.batch(np.arange(min(2, len(self.test))))
            with torch.no_grad():
                h, mask = self.parts.head(batch)
            x = h.detach().requires_grad_(True)
            with meter.measure("server", Phase.SPLIT, "body", "fwd"):
                z = self.parts.body(x, mask)
            with meter.measure("server", Phase.SPLIT, "body", "bwd"):
                z.backward(torch.ones_like(z))
            self.parts.body.zero_grad(set_to_none=True)
            per = h.shape[0] * h.shape[1]
            d = meter.by_direction()
            self._body_flops = (d.get("fwd", 0) / per, d.get("bwd", 0) / per)
        return sum(self._body_flops)

    def body_cost(self, pid: int | None = None) -> BodyCost:
        """Server FLOPs per body position, forward and backward (the time model's server work),
        at client ``pid``'s cut when cuts are heterogeneous."""
        if self.cut_names is not None and pid is not None:
            return BodyCost(*self.body_flops_for(self.cut_names.plan.of(pid)))
        self.body_flops_per_token()
        return BodyCost(*self._body_flops) if self._body_flops else BodyCost()

    def body_flops_for(self, cut: SplitSpec) -> tuple[float, float]:
        """Heterogeneous cuts: server FLOPs per position (forward, backward) of the body at ``cut``."""
        assert self.cut_names is not None
        if cut not in self.cut_names.flops:
            batch = self.test.batch(np.arange(min(2, len(self.test))))
            self.cut_names.flops[cut] = body_flops(self.model, cut, batch, inputs_only=True)  # a frozen body
        return self.cut_names.flops[cut]

    def server_flops(self, results: list[ClientResult]) -> float:
        """The body's FLOPs for these replies: their positions sent x the per-position FLOPs of
        each one's cut (one cut for all unless cuts are heterogeneous)."""
        if self.cut_names is None:
            return sum(r.metrics.get(keys.SPLIT_TOKENS, 0.0) for r in results) * self.body_flops_per_token()
        plan = self.cut_names.plan
        return sum(r.metrics.get(keys.SPLIT_TOKENS, 0.0) * sum(self.body_flops_for(plan.of(r.pid))) for r in results)

    def round_content(self, round: int) -> RecordDict | Callable[[int], RecordDict]:
        """The round's train message: one for every client, or with heterogeneous cuts one per
        cut (pid -> content), holding the global tensors of that cut's head and tail only."""
        extra, names = self.round_extra(), self.cut_names
        if names is None:
            return train_content(self.global_update, self.cfg, round, extra)

        def build(cut: SplitSpec) -> RecordDict:
            own = dict(extra)
            if keys.SIM_BODY_FLOPS in own:  # the client's deadline clock: its own body's cost
                own[keys.SIM_BODY_FLOPS] = sum(self.body_flops_for(cut))
            return train_content(names.download(self.global_update, cut, extra_buffers(self.model)), self.cfg, round, own)

        return names.per_cut(build)

    def hand_on(self, res: ClientResult) -> None:
        """SL: the next client starts from this client's part."""
        receive(self.method, self.model, res.update)  # type: ignore[arg-type]
        self._cut()

    def evaluate(self, split: str = "val") -> EvalResult | None:
        """Global client-side state + the server's body on the validation split (None without
        one) or, once per run, on the test split."""
        data = self.val if split == "val" else self.test
        model = served(self.model, self.parts, self.cfg.split.wire_dtype)  # split: over its wire
        return None if data is None else evaluate(model, data, self.cfg.train.eval_batch_size)

    def generative_score(self) -> float | None:
        """The ``[generate]`` evaluation of the global model (None when it is off)."""
        return None if self.gen_eval is None else self.gen_eval.score(self.model)


def round_clock(cfg: ExperimentConfig, strategy: Any) -> RoundClock | None:
    """The run's simulated clock (``resources.devices`` set, federated strategies), else None."""
    if not cfg.resources.enabled or strategy.family == "central":
        return None
    sequential = len(strategy.groups([0, 1])) > 1  # SL: one client after another
    return RoundClock(cfg, strategy.body_mode if strategy.split else "none", sequential)
