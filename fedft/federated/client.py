"""One client's round, independent of how the round was delivered (Flower message or direct call).

``ClientRuntime`` holds what a client keeps between rounds in one process: the task model
(rebuilt from the same config, then overwritten by the global state each round), its split
parts, and its own data partition (recomputed locally from the config and seed: partitioning
is a pure function, so every process gets the same one). ``client_round`` runs the strategy's
client side and returns the update and metrics.

SFPrompt's client round (spec sections 4.2, 5, 6): EL2N scores with head + tail (no body, no
traffic), keep the ``keep_ratio`` hardest, local-loss update on head -> tail, then split training
through the body service, all with one optimizer per round. FL strategies train the whole model
locally for ``train.epochs``.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedft.accounting import CommLedger, Phase
from fedft.config import ExperimentConfig
from fedft.data.datasets import EncodedSplit, encode, load_raw
from fedft.data.partition import partition
from fedft.federated.payload import receive, upload
from fedft.flops import FlopsMeter
from fedft.methods import BaseMethod
from fedft.modeling import TaskModel
from fedft.precondition import head_preconditioner
from fedft.split import SplitParts, SplitSpec, el2n_scores, local_step, split_model, split_step
from fedft.split.transport import Transport
from fedft.strategies import STRATEGIES
from fedft.train import lr_factor, make_optimizer, set_lr_factor

Update = dict[str, np.ndarray]
# (phase, T, D) -> an opened transport to the body, used as a context manager
OpenTransport = Callable[[str, int, int], Any]


@dataclass
class ClientRuntime:
    cfg: ExperimentConfig
    model: TaskModel
    method: BaseMethod
    parts: SplitParts | None
    train: EncodedSplit
    partitions: list[np.ndarray]  # every client's indices into the training split


@functools.lru_cache(maxsize=2)
def runtime(cfg: ExperimentConfig) -> ClientRuntime:
    """The client runtime for a config (cached per process: loading is the slow part)."""
    from fedft.central import build_model

    raw = load_raw(cfg.data, cfg.seed)
    model, method, pre = build_model(cfg, raw.num_labels)
    train = encode(raw, "train", pre, cfg.data.max_length)
    parts = None
    if STRATEGIES.get(cfg.federation.strategy).family == "split":
        parts = split_model(model, SplitSpec(cfg.split.head_blocks, cfg.split.tail_blocks))
        if STRATEGIES.get(cfg.federation.strategy).train_tail:
            parts.unfreeze_tail_blocks()
    return ClientRuntime(cfg, model, method, parts, train, partitions_for(cfg, np.asarray(raw.train_y)))


def partitions_for(cfg: ExperimentConfig, labels: np.ndarray) -> list[np.ndarray]:
    """Every client's indices into the training split (deterministic for the seed)."""
    p = cfg.partition
    return partition(labels, p.scheme, p.num_clients, cfg.seed, alpha=p.alpha,
                     labels_per_client=p.labels_per_client, min_size=p.min_size)


def n_kept(n: int, keep_ratio: float, batch_size: int) -> int:
    """n'_k = min(n_k, max(ceil(gamma * n_k), B)) (spec section 5)."""
    return min(n, max(math.ceil(keep_ratio * n), batch_size))


def select_hardest(scores: np.ndarray, k: int) -> np.ndarray:
    """Mask of the ``k`` highest scores, ties broken by the lower index; keeps original order."""
    order = np.lexsort((np.arange(len(scores)), -scores))  # by score desc, then index asc
    mask = np.zeros(len(scores), dtype=bool)
    mask[order[:k]] = True
    return mask


def _rng(cfg: ExperimentConfig, round: int, pid: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, round, pid, stream])


def prune(rt: ClientRuntime, idx: np.ndarray, round: int, pid: int, flops: FlopsMeter) -> np.ndarray:
    """The kept subset of ``idx`` for this round (EL2N hardest, random, or all)."""
    sc = rt.cfg.method.sfprompt
    k = n_kept(len(idx), sc.keep_ratio, rt.cfg.train.batch_size)
    if sc.pruning == "none" or k >= len(idx):
        return idx
    if sc.pruning == "random":
        pick = _rng(rt.cfg, round, pid, 1).choice(len(idx), size=k, replace=False)
        return idx[np.sort(pick)]
    assert rt.parts is not None
    prompt = rt.model.prompt
    saved = None
    if prompt is not None and not sc.score_with_prompts:
        saved, rt.parts.head.model.prompt = prompt, None  # score without prompts
    try:
        scores = torch.cat([el2n_scores(rt.parts, b, flops, batch_norm_stats=sc.score_norm == "batch") for b in
                            rt.train.batches(idx, rt.cfg.train.eval_batch_size)]).numpy()
    finally:
        if saved is not None:
            rt.model.prompt = saved
    return idx[select_hardest(scores, k)]


def client_round(
    rt: ClientRuntime, round: int, pid: int, update: Update, open_transport: OpenTransport | None,
    state: dict[str, Any] | None = None,
) -> tuple[Update, dict[str, float]]:
    """Run this client's part of round ``round`` from the global ``update``; return (update, metrics)."""
    t0 = time.time()
    cfg, info = rt.cfg, STRATEGIES.get(rt.cfg.federation.strategy)
    receive(rt.method, rt.model, update)
    rt.method.on_round_start(rt.model, round)
    idx = rt.partitions[pid]
    torch.manual_seed(int(_rng(cfg, round, pid, 0).integers(2**31)))
    data_rng = _rng(cfg, round, pid, 2)
    flops = FlopsMeter()
    held = (rt.parts.client_parameters() if rt.parts is not None
            else [p for p in rt.model.parameters() if p.requires_grad])
    opt = make_optimizer(rt.model, cfg.train) if held else None
    if opt is not None:
        set_lr_factor(opt, [g["lr"] for g in opt.param_groups],
                      lr_factor(cfg.train, round - 1, cfg.federation.rounds))
    metrics: dict[str, float] = {"num-examples": float(len(idx))}
    if info.family == "fl":
        loss = _fl_round(rt, idx, opt, data_rng, flops)
        metrics.update({"num-kept": float(len(idx)), "train-loss": loss, "local-loss": 0.0,
                        "split-samples": 0.0})
    else:
        assert open_transport is not None and opt is not None
        metrics.update(_split_round(rt, round, pid, idx, opt, data_rng, flops, open_transport, state))
    metrics["client-flops"] = float(flops.total(party="client"))
    metrics["client-seconds"] = time.time() - t0
    return upload(rt.method, rt.model, rt.parts), metrics


def _fl_round(rt: ClientRuntime, idx: np.ndarray, opt: Any, rng: np.random.Generator,
              flops: FlopsMeter) -> float:
    model, cfg = rt.model, rt.cfg
    model.train()
    pre = head_preconditioner(model, cfg.train.kfac_damping, flops, Phase.TRAIN)
    with _averaging(model):
        loss_sum, n = _fl_epochs(rt, idx, opt, rng, flops, pre)
    if pre is not None:
        pre.finish()
    return loss_sum / max(n, 1)


def _fl_epochs(rt: ClientRuntime, idx: np.ndarray, opt: Any, rng: np.random.Generator,
               flops: FlopsMeter, pre: Any) -> tuple[float, int]:
    model, cfg = rt.model, rt.cfg
    loss_sum, n = 0.0, 0
    for _ in range(cfg.train.epochs):
        for batch in rt.train.batches(idx, cfg.train.batch_size, shuffle=True, rng=rng):
            key = tuple((k, tuple(v.shape)) for k, v in sorted(batch.items()))
            opt.zero_grad(set_to_none=True)
            with _active(pre), flops.measure("client", Phase.TRAIN, "full", "fwd", key):
                logits = model(batch)
                loss = model.loss(logits, batch)
            with flops.measure("client", Phase.TRAIN, "full", "bwd", key):
                loss.backward()
            if pre is not None:
                pre.apply()
            opt.step()
            loss_sum, n = loss_sum + float(loss.detach()) * len(logits), n + len(logits)
    return loss_sum, n


def _active(pre: Any) -> Any:

    return nullcontext() if pre is None else pre.active()


def _split_round(
    rt: ClientRuntime, round: int, pid: int, idx: np.ndarray, opt: Any, rng: np.random.Generator,
    flops: FlopsMeter, open_transport: OpenTransport, state: dict[str, Any] | None,
) -> dict[str, float]:
    cfg, sc, parts = rt.cfg, rt.cfg.method.sfprompt, rt.parts
    assert parts is not None
    parts.head.train()
    parts.tail.train()
    parts.body.eval()
    if sc.prune_every_round or state is None or "kept" not in state:
        kept = prune(rt, idx, round, pid, flops)
        if state is not None:
            state["kept"] = kept
    else:
        kept = state["kept"]
    loss_fn = rt.model.loss
    local_idx = kept if sc.local_update_on_pruned else idx

    def local_phase() -> float:
        total, n = 0.0, 0
        norm = rt.model.readout_norm
        lrs = [g["lr"] for g in opt.param_groups]
        set_lr_factor(opt, lrs, sc.local_lr_scale)
        with norm.batch_statistics() if norm is not None else nullcontext():
            for _ in range(sc.local_epochs):
                for batch in rt.train.batches(local_idx, cfg.train.batch_size, shuffle=True, rng=rng):
                    opt.zero_grad(set_to_none=True)
                    r = local_step(parts, batch, loss_fn, flops)
                    opt.step()
                    total, n = total + r.loss * r.n, n + r.n
        set_lr_factor(opt, lrs, 1.0)
        if sc.reset_optimizer:
            opt.state.clear()
        return total / max(n, 1)

    local_loss = local_phase() if sc.local_update_position == "before_split" else 0.0
    split_idx = kept
    if sc.rescore_before_split and sc.pruning == "el2n":
        split_idx = prune(rt, idx, round, pid, flops)
    loss, n = _split_phase(rt, split_idx, opt, rng, flops, open_transport)
    if sc.local_update_position == "after_split":
        local_loss = local_phase()
    return {"num-kept": float(len(kept)), "train-loss": loss, "local-loss": local_loss,
            "split-samples": float(n)}


def _split_phase(rt: ClientRuntime, split_idx: np.ndarray, opt: Any, rng: np.random.Generator,
                 flops: FlopsMeter, open_transport: OpenTransport) -> tuple[float, int]:
    """Split training (spec 4.2, Phase 2) over ``split_idx``: (mean loss, samples)."""
    cfg, parts = rt.cfg, rt.parts
    assert parts is not None
    if not rt.cfg.method.sfprompt.split_epochs or not len(split_idx):
        return 0.0, 0
    sample = rt.train.batch(split_idx[:1])
    with torch.no_grad():
        h, _ = parts.head(sample)
    pre = head_preconditioner(rt.model, cfg.train.kfac_damping, flops, Phase.SPLIT)
    total, n = 0.0, 0
    with open_transport(Phase.SPLIT, int(h.shape[1]), int(h.shape[2])) as transport, _averaging(rt.model):
        for _ in range(cfg.method.sfprompt.split_epochs):
            for batch in rt.train.batches(split_idx, cfg.train.batch_size, shuffle=True, rng=rng):
                opt.zero_grad(set_to_none=True)
                with _active(pre):
                    r = split_step(parts, batch, transport, rt.model.loss, flops)
                if pre is not None:
                    pre.apply()
                opt.step()
                total, n = total + r.loss * r.n, n + r.n
    if pre is not None:
        pre.finish()
    return total / max(n, 1), n


def _averaging(model: TaskModel) -> Any:
    """The readout norm's round-average context (a no-op without a readout norm)."""

    norm = model.readout_norm
    return nullcontext() if norm is None else norm.round_average()  # type: ignore[operator]


def loopback_opener(session_factory: Callable[[], Any], ledger: CommLedger, round: int, client: str,
                    wire: str) -> OpenTransport:
    """An ``open_transport`` over an in-process body session (tests, quick experiments)."""
    from contextlib import contextmanager

    from fedft.split.transport import LoopbackTransport

    @contextmanager
    def opener(phase: str, T: int, D: int):  # noqa: ANN202
        yield LoopbackTransport(session_factory(), ledger, round, client, phase, wire)  # type: ignore[arg-type]

    return opener


def grpc_opener(address: str, token: str, ledger: CommLedger, round: int, client: str, wire: str,
                max_batch: int, root_certificates: bytes | None = None) -> OpenTransport:
    """An ``open_transport`` over the gRPC body service."""
    from contextlib import contextmanager

    from fedft.split.grpc_transport import GrpcTransport

    @contextmanager
    def opener(phase: str, T: int, D: int):  # noqa: ANN202
        t: Transport
        with GrpcTransport(address, token, ledger, round=round, client=client, phase=phase, wire=wire,  # type: ignore[arg-type]
                           T=T, D=D, max_batch=max_batch, root_certificates=root_certificates) as t:
            yield t

    return opener
