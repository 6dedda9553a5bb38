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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

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
from fedft.flops import FlopsMeter
from fedft.gen_eval import GenerativeEval
from fedft.methods.base import state_tensors
from fedft.model import build_model
from fedft.outputs import PARTITIONS, RunDir
from fedft.recipes.apply import recipe_for
from fedft.train import EvalResult, evaluate, make_optimizer

log = logging.getLogger(__name__)


@dataclass
class ClientResult:
    """What came back from one client in one round (``error`` set when it failed)."""

    pid: int
    update: Update | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None


class ServerRuntime:
    """Everything the server keeps for one run."""

    def __init__(self, cfg: ExperimentConfig, run: RunDir) -> None:
        self.cfg, self.run = cfg, run
        self.strategy = strategy_for(cfg)
        self.aggregator = Aggregator.for_config(cfg)
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
        self.parts = split_parts(cfg, self.model)
        self.global_update: Update = {}
        self._cut()
        self.ledger = CommLedger()
        self.service: Any = None
        self._body_flops: float | None = None
        self._pending_optimizer: dict | None = None
        self.resumed: Checkpoint | None = None

    def _cut(self) -> None:
        """The next download from the server's model (the source of truth), and what a reply
        may contain: tensors of the download, dense or as sparse pairs."""
        self.global_update = download(self.method, self.model, self.parts)
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
                           tls: tuple[bytes, bytes] | None = None) -> None:
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
        )
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

    def round_extra(self) -> dict[str, str | int | bytes]:
        """Per-round config entries for clients: where the body service is and its token."""
        if self.service is None:
            return {}
        extra: dict[str, str | int | bytes] = {keys.BODY_ADDRESS: self.service.address,
                                               keys.BODY_TOKEN: self.service.token}
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
        """The clients of ``round``: K of N uniformly without replacement (all when K = 0 or K >= N)."""
        n, k = self.cfg.partition.num_clients, self.cfg.federation.clients_per_round
        rng = np.random.default_rng([self.cfg.seed, round, 7])
        pids = np.arange(n) if k == 0 or k >= n else rng.choice(n, size=k, replace=False)
        return self.strategy.order([int(p) for p in pids], rng)

    def accept(self, res: ClientResult) -> bool:
        """Validate one reply against the expected update; a bad one is dropped, not fatal."""
        if res.error is None and res.update is not None:
            res.error = check_upload(res.update, self.model, self.allowed)
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
            self._body_flops = meter.total() / (h.shape[0] * h.shape[1])
        return self._body_flops

    def hand_on(self, res: ClientResult) -> None:
        """SL: the next client starts from this client's part."""
        receive(self.method, self.model, res.update)  # type: ignore[arg-type]
        self._cut()

    def evaluate(self, split: str = "val") -> EvalResult | None:
        """Global client-side state + the server's body on the validation split (None without
        one) or, once per run, on the test split."""
        data = self.val if split == "val" else self.test
        return None if data is None else evaluate(self.model, data, self.cfg.train.eval_batch_size)

    def generative_score(self) -> float | None:
        """The ``[generate]`` evaluation of the global model (None when it is off)."""
        return None if self.gen_eval is None else self.gen_eval.score(self.model)

