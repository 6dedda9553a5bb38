"""SplitFed: U-split models, per-batch traffic to the server's body, FedAvg of the client parts.

``sfl`` prompt-tunes against a frozen body (SFPrompt without pruning and local update);
``sfl_v1`` and ``sfl_v2`` fine-tune the whole model with a trainable body, one copy per client
averaged each round (V1) or one shared copy updated as batches arrive (V2); ``split_fedavg``
runs the configured method on the client-held parts against a frozen body.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedft import keys
from fedft.accounting import Phase
from fedft.errors import check
from fedft.precondition import head_preconditioner
from fedft.split import split_step
from fedft.strategies.base import (
    RoundContext,
    Strategy,
    active,
    averaging,
    random_order,
    register_strategy,
    variant,
)


@dataclass(frozen=True)
class SplitFedOptions:
    """Options of the SplitFed family (``[federation.splitfed]``)."""

    split_epochs: int = 1  # passes over the client's data through the body per round

    def __post_init__(self) -> None:
        check(self.split_epochs >= 0, "federation.splitfed.split_epochs", "an integer >= 0")


def split_phase(ctx: RoundContext, split_idx: np.ndarray, epochs: int) -> tuple[float, int]:
    """Split training over ``split_idx`` for ``epochs`` epochs: (mean loss, samples)."""
    rt, parts, train = ctx.rt, ctx.rt.parts, ctx.rt.cfg.train
    assert parts is not None and ctx.open_transport is not None
    if not epochs or not len(split_idx):
        return 0.0, 0
    with torch.no_grad():
        h, _ = parts.head(rt.train.batch(split_idx[:1]))
    # the longest sequence a batch may send: SFT batches are padded per batch, to at most this
    longest = rt.train.max_tokens(split_idx)
    T = int(h.shape[1]) if longest is None else longest + rt.model.n_prompts
    pre = head_preconditioner(rt.model, train.kfac_damping, ctx.flops, Phase.SPLIT)
    total, n = 0.0, 0
    with ctx.open_transport(Phase.SPLIT, T, int(h.shape[2])) as transport, averaging(rt.model):
        for _ in range(epochs):
            for batch in rt.train.batches(split_idx, train.batch_size, shuffle=True, rng=ctx.rng):
                if ctx.out_of_time():  # partial work: the round's deadline
                    break
                ctx.opt.zero_grad(set_to_none=True)
                with active(pre):
                    r = split_step(parts, batch, transport, rt.model.loss, ctx.flops, nopeek=rt.cfg.split.nopeek)
                if pre is not None:
                    pre.apply()
                ctx.step()
                total, n = total + r.loss * r.n, n + r.n
                # positions sent: this batch's padded length (+ prompts), or the fixed T
                ctx.split_tokens += r.n * (T if longest is None else batch["input_ids"].shape[1] + rt.model.n_prompts)
    if pre is not None:
        pre.finish()
    return total / max(n, 1), n


def train_modes(ctx: RoundContext) -> None:
    parts = ctx.rt.parts
    assert parts is not None
    parts.head.train()
    parts.tail.train()
    parts.body.eval()


@register_strategy
class SplitFed(Strategy):
    name = "split_fedavg"
    description = ("SplitFed with a frozen body and the configured method on the client-held parts (head + "
                   "tail); FedAvg of what the method trains there")
    family = "split"
    Options = SplitFedOptions
    table = "splitfed"

    def client_train(self, ctx: RoundContext) -> dict[str, float]:
        train_modes(ctx)
        loss, n = split_phase(ctx, ctx.idx, self.options.split_epochs)
        return {keys.NUM_KEPT: float(len(ctx.idx)), keys.TRAIN_LOSS: loss, keys.LOCAL_LOSS: 0.0,
                keys.SPLIT_SAMPLES: float(n)}


variant(SplitFed, "sfl", "SplitFed prompt tuning with a frozen body (SFPrompt with keep_ratio 1 and no "
        "local-loss update)", method="prompt_tuning", trains_tail=True)
variant(SplitFed, "sfl_v1", "SplitFed V1: trainable body, one body copy per client, averaged each round; "
        "client parts FedAvg", method="full_ft", body_mode="per_client")
variant(SplitFed, "sfl_v2", "SplitFed V2: trainable shared body updated as clients' batches arrive (clients in a "
        "random order each round); client parts FedAvg", method="full_ft", body_mode="shared", order=random_order)
