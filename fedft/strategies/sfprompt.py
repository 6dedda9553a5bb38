"""SFPrompt: split federated prompt tuning (Cao, Zhu, Gong; arXiv 2407.17533). See docs/sfprompt.md.

The client holds the head (embeddings + soft prompts) and the tail (final norm + classifier);
the server holds the frozen body. Each round a client (1) scores its data by EL2N with head +
tail, skipping the body (no traffic), and keeps the ``keep_ratio`` hardest; (2) runs a local-loss
update on head -> tail; (3) trains through the body over the body service; all with one
optimizer per round. The server FedAvgs prompts + tail. The ablations are one-line variants.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from fedft import keys
from fedft.errors import check
from fedft.split import el2n_scores, local_step
from fedft.strategies.base import RoundContext, Strategy, register_strategy, variant
from fedft.strategies.splitfed import split_phase, train_modes
from fedft.train import set_lr_factor


@dataclass(frozen=True)
class SFPromptOptions:
    """SFPrompt's options (``[federation.sfprompt]``); [paper] the paper's setting, [D] fedft's."""

    keep_ratio: float = 0.5  # [D] the paper's gamma, read as the fraction of each client's data kept
    pruning: Literal["el2n", "random", "none"] = "el2n"  # [paper] EL2N scores
    prune_every_round: bool = True
    score_with_prompts: bool = True  # [D]
    # [D] the readout norm in the EL2N pass: "batch" (each scoring batch's own statistics, as in the
    # local-loss update: the scored features are head outputs, not body outputs) or "running"
    score_norm: Literal["running", "batch"] = "batch"
    rescore_before_split: bool = False
    local_epochs: int = 1  # [D] E_l
    split_epochs: int = 1  # [D] E_s
    local_update_on_pruned: bool = True
    local_update_position: Literal["before_split", "after_split"] = "before_split"
    agg_weighting: Literal["n_samples", "n_kept", "uniform"] = "n_samples"  # [D] FedAvg weights n_k
    # [D] learning-rate multiplier during the local-loss update (its tail sees head features, not
    # the body features it is evaluated on)
    local_lr_scale: float = 0.1
    reset_optimizer: bool = True  # [D] fresh momentum for split training after the local update

    def __post_init__(self) -> None:
        check(0 < self.keep_ratio <= 1, "federation.sfprompt.keep_ratio", "a float in (0, 1]")
        check(self.local_lr_scale >= 0, "federation.sfprompt.local_lr_scale", "a float >= 0")
        check(self.local_epochs >= 0, "federation.sfprompt.local_epochs", "an integer >= 0")
        check(self.split_epochs >= 0, "federation.sfprompt.split_epochs", "an integer >= 0")


def n_kept(n: int, keep_ratio: float, batch_size: int) -> int:
    """n'_k = min(n_k, max(ceil(gamma * n_k), B))."""
    return min(n, max(math.ceil(keep_ratio * n), batch_size))


def select_hardest(scores: np.ndarray, k: int) -> np.ndarray:
    """Mask of the ``k`` highest scores, ties broken by the lower index; keeps original order."""
    order = np.lexsort((np.arange(len(scores)), -scores))  # by score desc, then index asc
    mask = np.zeros(len(scores), dtype=bool)
    mask[order[:k]] = True
    return mask


@register_strategy
class SFPrompt(Strategy):
    name = "sfprompt"
    description = "SFPrompt: EL2N pruning, local-loss update, split prompt tuning, FedAvg of prompts + tail"
    family = "split"
    method = "prompt_tuning"
    trains_tail = True
    Options = SFPromptOptions

    def weight(self, metrics: dict[str, float]) -> float:
        w = self.options.agg_weighting
        if w == "uniform":
            return 1.0
        return float(metrics[keys.NUM_KEPT if w == "n_kept" else keys.NUM_EXAMPLES])

    def prune(self, ctx: RoundContext, idx: np.ndarray) -> np.ndarray:
        """The kept subset of ``idx`` for this round (EL2N hardest, random, or all)."""
        o, rt = self.options, ctx.rt
        k = n_kept(len(idx), o.keep_ratio, rt.cfg.train.batch_size)
        if o.pruning == "none" or k >= len(idx):
            return idx
        if o.pruning == "random":
            return idx[np.sort(ctx.stream(1).choice(len(idx), size=k, replace=False))]
        assert rt.parts is not None
        saved = None
        if rt.model.prompt is not None and not o.score_with_prompts:
            saved, rt.parts.head.model.prompt = rt.model.prompt, None  # score without prompts
        try:
            scores = torch.cat([el2n_scores(rt.parts, b, ctx.flops, batch_norm_stats=o.score_norm == "batch")
                                for b in rt.train.batches(idx, rt.cfg.train.eval_batch_size)]).numpy()
        finally:
            if saved is not None:
                rt.model.prompt = saved
        return idx[select_hardest(scores, k)]

    def local_phase(self, ctx: RoundContext, idx: np.ndarray) -> float:
        """The local-loss update on head -> tail (the body skipped): mean loss."""
        o, rt, opt = self.options, ctx.rt, ctx.opt
        total, n = 0.0, 0
        norm = rt.model.readout_norm
        lrs = [g["lr"] for g in opt.param_groups]
        set_lr_factor(opt, lrs, o.local_lr_scale)
        with norm.batch_statistics() if norm is not None else nullcontext():
            for _ in range(o.local_epochs):
                for batch in rt.train.batches(idx, rt.cfg.train.batch_size, shuffle=True, rng=ctx.rng):
                    if ctx.out_of_time():  # partial work: the round's deadline
                        break
                    opt.zero_grad(set_to_none=True)
                    r = local_step(rt.parts, batch, rt.model.loss, ctx.flops)
                    ctx.step()
                    total, n = total + r.loss * r.n, n + r.n
        set_lr_factor(opt, lrs, 1.0)
        if o.reset_optimizer:
            opt.state.clear()
        return total / max(n, 1)

    def client_train(self, ctx: RoundContext) -> dict[str, float]:
        o = self.options
        train_modes(ctx)
        if o.prune_every_round or ctx.state is None or "kept" not in ctx.state:
            kept = self.prune(ctx, ctx.idx)
            if ctx.state is not None:
                ctx.state["kept"] = kept
        else:
            kept = ctx.state["kept"]
        local_idx = kept if o.local_update_on_pruned else ctx.idx
        local_loss = self.local_phase(ctx, local_idx) if o.local_update_position == "before_split" else 0.0
        split_idx = self.prune(ctx, ctx.idx) if o.rescore_before_split and o.pruning == "el2n" else kept
        loss, n = split_phase(ctx, split_idx, o.split_epochs)
        if o.local_update_position == "after_split":
            local_loss = self.local_phase(ctx, local_idx)
        return {keys.NUM_KEPT: float(len(kept)), keys.TRAIN_LOSS: loss, keys.LOCAL_LOSS: local_loss,
                keys.SPLIT_SAMPLES: float(n)}


variant(SFPrompt, "sfprompt_no_prune", "SFPrompt without dataset pruning (keep_ratio 1)",
        fixed={"keep_ratio": 1.0})
variant(SFPrompt, "sfprompt_no_local", "SFPrompt without the local-loss update (local_epochs 0)",
        fixed={"local_epochs": 0})
variant(SFPrompt, "sfprompt_random", "SFPrompt with random pruning at the same keep ratio (the control for "
        "EL2N)", fixed={"pruning": "random"})
