"""One client's round, independent of how it was delivered (Flower message or direct call).

:func:`runtime` builds what a client process keeps between rounds (model, split parts, its data
partition, recomputed from the config and seed: partitioning is a pure function, so every
process gets the same one). :func:`client_round` loads the global state, prepares the round's
optimizer and seeds, and hands the work to the strategy's ``client_train`` hook.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from fedft import keys
from fedft.accounting import CommLedger
from fedft.body.wire import Wire
from fedft.config import ExperimentConfig
from fedft.data.datasets import encode, load_raw
from fedft.data.partition import Partitions, partition
from fedft.federated.aggregation import Update
from fedft.federated.payload import receive, upload
from fedft.flops import FlopsMeter
from fedft.model import build_model
from fedft.split import SplitSpec, split_model
from fedft.split.cuts import apply_cut, plan_cuts
from fedft.strategies import STRATEGIES, RoundContext, Strategy
from fedft.strategies.base import ClientRuntime, OpenTransport, stream
from fedft.train import Proximal, lr_factor, make_optimizer, set_lr_factor


@functools.lru_cache(maxsize=2)
def runtime(cfg: ExperimentConfig) -> ClientRuntime:
    """The client runtime for a config (cached per process: loading is the slow part)."""
    raw = load_raw(cfg.data, cfg.seed)
    model, method, pre = build_model(cfg, raw.num_labels)
    train = encode(raw, "train", pre, cfg.data.max_length)
    trainable = frozenset(n for n, p in model.named_parameters() if p.requires_grad)  # before any cut
    return ClientRuntime(cfg, model, method, split_parts(cfg, model), train,
                         partitions_for(cfg, np.asarray(raw.train_y)), raw.train_x, raw.system, pre,
                         trainable=trainable)


def client_cut(cfg: ExperimentConfig, pid: int) -> SplitSpec | None:
    """Client ``pid``'s cut (``resources.cuts``), or None when the strategy does not split."""
    return plan_cuts(cfg).of(pid) if STRATEGIES.get(cfg.federation.strategy).family == "split" else None


def cut_runtime(rt: ClientRuntime, pid: int) -> ClientRuntime:
    """``rt`` with client ``pid``'s parts: re-cut (by reference) with its ``requires_grad`` flags
    when cuts are heterogeneous, else ``rt`` itself."""
    if rt.parts is None or not plan_cuts(rt.cfg).heterogeneous:
        return rt
    cls = STRATEGIES.get(rt.cfg.federation.strategy)
    parts = apply_cut(rt.model, plan_cuts(rt.cfg).of(pid), rt.trainable, cls.trains_tail, rt.cfg.split.train_head)
    return dataclasses.replace(rt, parts=parts)


def client_data(rt: ClientRuntime, pid: int) -> tuple[ClientRuntime, np.ndarray, dict[str, float]]:
    """The runtime and indices client ``pid`` trains on: its partition, or, with a data recipe, the
    set the recipe built from its partition with the model it held at its first round (kept)."""
    if rt.cfg.recipe.name == "none":
        return rt, rt.partitions[pid], {}
    if pid not in rt.built:
        from fedft.data.sft_data import encode_sft
        from fedft.recipes.apply import client_examples

        own = [rt.examples[int(i)] for i in rt.partitions[pid]]
        result = client_examples(rt.cfg, own, rt.model, rt.tokenizer, rt.system)
        split = encode_sft(result.examples, torch.zeros(len(result.examples), dtype=torch.long),
                           rt.tokenizer, rt.cfg.data.max_length, rt.system)
        rt.built[pid] = (split, result.report)
    split, report = rt.built[pid]
    metrics = {f"recipe_{k}": float(v) for k, v in report.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return dataclasses.replace(rt, train=split), np.arange(len(split)), metrics


@functools.lru_cache(maxsize=4)
def strategy_for(cfg: ExperimentConfig) -> Strategy:
    return STRATEGIES.get(cfg.federation.strategy)(cfg)


def split_parts(cfg: ExperimentConfig, model: Any) -> Any:
    """The head/body/tail parts of ``model`` when the strategy splits it, else None."""
    cls = STRATEGIES.get(cfg.federation.strategy)
    if cls.family != "split":
        return None
    parts = split_model(model, SplitSpec(cfg.split.head_blocks, cfg.split.tail_blocks))
    if cls.trains_tail:
        parts.unfreeze_tail_blocks()
    if cfg.split.train_head:
        parts.unfreeze_head_blocks()
    return parts


def partitions_for(cfg: ExperimentConfig, labels: np.ndarray) -> Partitions:
    """Every client's indices into the training split (deterministic for the seed; vectorised,
    two arrays whatever the number of clients)."""
    p = cfg.partition
    return partition(labels, p.scheme, p.num_clients, cfg.seed, alpha=p.alpha,
                     labels_per_client=p.labels_per_client, min_size=p.min_size)


def client_round(
    rt: ClientRuntime, round: int, pid: int, update: Update, open_transport: OpenTransport | None,
    state: dict[str, Any] | None = None, meter: FlopsMeter | None = None, clock: Any = None,
) -> tuple[Update, dict[str, float]]:
    """Run this client's part of round ``round`` from the global ``update``; return (update, metrics).
    ``clock`` (a :class:`~fedft.resources.timeline.ClientClock`) stops training at the deadline."""
    t0 = time.time()
    cfg = rt.cfg
    rt = cut_runtime(rt, pid)  # this client's cut (heterogeneous split points)
    receive(rt.method, rt.model, update)
    rt.method.on_client_round(rt.model, round)
    rt, idx, recipe_metrics = client_data(rt, pid)
    torch.manual_seed(int(stream(cfg.seed, round, pid, 0).integers(2**31)))
    held = (rt.parts.client_parameters() if rt.parts is not None
            else [p for p in rt.model.parameters() if p.requires_grad])
    opt = make_optimizer(rt.model, cfg.train) if held else None
    if opt is not None:
        set_lr_factor(opt, [g["lr"] for g in opt.param_groups],
                      lr_factor(cfg.train, round - 1, cfg.federation.rounds))
    ctx = RoundContext(rt, round, pid, idx, opt, stream(cfg.seed, round, pid, 2), meter or FlopsMeter(),
                       open_transport, state, Proximal.for_config(cfg, held), clock=clock)
    metrics: dict[str, float] = {keys.NUM_EXAMPLES: float(len(idx)), **recipe_metrics}
    metrics.update(strategy_for(cfg).client_train(ctx))
    metrics[keys.SPLIT_TOKENS] = float(ctx.split_tokens)
    if rt.parts is not None:  # the cut this client trained at (the time model and the server read it)
        metrics[keys.HEAD_BLOCKS] = float(rt.parts.spec.head_blocks)
        metrics[keys.TAIL_BLOCKS] = float(rt.parts.spec.tail_blocks)
    metrics[keys.CLIENT_FLOPS] = float(ctx.flops.total(party="client"))
    metrics[keys.CLIENT_SECONDS] = time.time() - t0
    return upload(rt.method, rt.model, rt.parts), metrics


def grpc_opener(address: str, token: str, ledger: CommLedger, round: int, client: str, wire: Wire,
                max_batch: int, root_certificates: bytes | None = None,
                cut: SplitSpec | None = None) -> OpenTransport:
    """An ``open_transport`` over the gRPC body service; ``cut``: the client's, sent at Open."""
    from fedft.body.client import GrpcTransport

    pair = None if cut is None else (cut.head_blocks, cut.tail_blocks)

    @contextmanager
    def opener(phase: str, T: int, D: int):  # noqa: ANN202
        with GrpcTransport(address, token, ledger, round=round, client=client, phase=phase, wire=wire,
                           T=T, D=D, max_batch=max_batch, root_certificates=root_certificates, cut=pair) as t:
            yield t

    return opener
