"""A loss plugin in causal-LM fine-tuning: ``[train] loss`` selects it, ``[loss.<name>]`` holds its
options. The default ``token_mean`` is the task model's own loss (``TaskModel.loss``: the mean
over every response token of the batch), unchanged.

What fedft does with another loss in a central run (:func:`fedft.central.run_central`):

- the SFT splits' batches carry ``task_ids`` (task names numbered in sorted order over the run's
  splits, :func:`task_index`); the plugin sees them, ``fedft`` keeps every other batch key;
- training calls the plugin instead of ``TaskModel.loss``; evaluation (``val_loss``, ``test_loss``)
  stays the token mean, so runs with different losses report comparable numbers;
- a loss that adapts (CoBa) observes each task's validation loss (the token mean over that task's
  responses) after every evaluation, that is before training (step 0) and after each epoch; the
  step it is given counts optimizer steps.

:func:`packed_logits` runs a task model on a packed batch (:func:`fedft.data.sft.pack`): position
ids restart per example and the block-diagonal mask keeps examples apart (Llama-style models).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from fedft.data.sft import packed_attention_mask, pad_batch
from fedft.data.sft_data import SFTSplit
from fedft.errors import ConfigError
from fedft.losses.base import LOSSES, Loss
from fedft.losses.mftcoder import sample_stats

TOKEN_MEAN = "token_mean"  # [D] the default: TaskModel.loss, today's behaviour


def loss_names() -> list[str]:
    """What ``train.loss`` accepts: ``token_mean`` and every registered loss plugin that trains on
    SFT batches (not DPO, whose batches are preference pairs)."""
    return [TOKEN_MEAN, *(n for n in LOSSES.names() if LOSSES.get(n).sft)]


def make_loss(name: str, options: Any = None, tasks: Iterable[str] = ()) -> Loss | None:
    """The plugin ``name`` with its options, bound to the task names (None for ``token_mean``)."""
    if name == TOKEN_MEAN:
        return None
    if name not in LOSSES:
        raise ConfigError(f"bad value {name!r} for train.loss; allowed: {', '.join(loss_names())}")
    loss = LOSSES.get(name)(options)
    loss.bind_tasks(list(tasks))
    return loss


def task_index(splits: Iterable[SFTSplit | None]) -> dict[str, int]:
    """Task name -> id, the names of every split's examples in sorted order."""
    names = sorted({it.task for s in splits if s is not None for it in s.items})
    return {n: i for i, n in enumerate(names)}


class TaskIdSplit(SFTSplit):
    """An :class:`SFTSplit` whose padded batches also carry ``task_ids`` (B,)."""

    def __init__(self, split: SFTSplit, index: Mapping[str, int]) -> None:
        super().__init__(split.items, split.labels, split.pad_id)
        self.index = dict(index)

    def batch(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        b = pad_batch([self.items[int(i)] for i in idx], self.pad_id, self.index)
        return {k: b[k] for k in ("input_ids", "attention_mask", "labels", "task_ids")}


class WithLoss(nn.Module):
    """``net`` (its forward, its parameters, its train/eval mode) with ``loss`` as its training loss."""

    def __init__(self, net: nn.Module, loss: Loss) -> None:
        super().__init__()
        self.net, self.plugin = net, loss

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return self.net(batch)

    def loss(self, logits: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        return self.plugin(logits, batch)


@torch.no_grad()
def task_losses(model: nn.Module, split: TaskIdSplit, batch_size: int) -> dict[int, float]:
    """Each task's validation loss: the token mean over its examples' response tokens."""
    from fedft.precision import weight_cast_cache

    was = model.training
    model.eval()
    nll: dict[int, float] = {}
    tokens: dict[int, float] = {}
    with weight_cast_cache(model):
        for batch in split.batches(np.arange(len(split)), batch_size):
            s = sample_stats(model(batch), batch["labels"], batch["task_ids"])
            for t, x, n in zip(s.tasks.tolist(), s.nll.tolist(), s.tokens.tolist(), strict=True):
                nll[t], tokens[t] = nll.get(t, 0.0) + x, tokens.get(t, 0.0) + n
    model.train(was)
    return {t: nll[t] / tokens[t] for t in sorted(nll)}


class LossRun:
    """The configured loss plugin of a central SFT run: the training net and the observations."""

    def __init__(self, loss: Loss, train: TaskIdSplit, val: TaskIdSplit | None, batch_size: int,
                 eval_batch_size: int) -> None:
        self.loss, self.train, self.val = loss, train, val
        self.steps_per_epoch = math.ceil(len(train) / batch_size)
        self.eval_batch_size = eval_batch_size
        self.observed: list[dict[str, Any]] = []

    @classmethod
    def for_run(cls, cfg: Any, model: nn.Module, train: Any, val: Any, test: Any) -> LossRun | None:
        """None for ``train.loss = token_mean``; a :class:`ConfigError` when the run cannot use it."""
        if cfg.train.loss == TOKEN_MEAN:
            return None
        if getattr(model, "task", None) != "causal_lm" or not isinstance(train, SFTSplit):
            raise ConfigError(f"train.loss={cfg.train.loss} needs causal-LM fine-tuning on SFT data "
                              "(model.task = causal_lm and an SFT data.name); use train.loss=token_mean")
        index = task_index([train, val, test])
        loss = make_loss(cfg.train.loss, cfg.loss.options_for(cfg.train.loss), index)
        assert loss is not None
        if loss.adaptive and val is None:
            raise ConfigError(f"train.loss={cfg.train.loss} (mode coba) observes per-task validation losses: "
                              "set data.val_size > 0")
        return cls(loss, TaskIdSplit(train, index), None if val is None else TaskIdSplit(val, index),
                   cfg.train.batch_size, cfg.train.eval_batch_size)

    def wrap(self, net: nn.Module) -> WithLoss:
        return WithLoss(net, self.loss)

    def observe(self, model: nn.Module, epoch: int) -> None:
        """After the evaluation of ``epoch`` (0 = before training): an adaptive loss observes each
        task's validation loss at the optimizer step reached."""
        if not self.loss.adaptive or self.val is None:
            return
        step = epoch * self.steps_per_epoch
        losses = task_losses(model, self.val, self.eval_batch_size)
        self.loss.observe(step, losses)
        self.observed.append({"step": step, "val_losses": losses, **self.loss.report()})

    def describe(self) -> dict[str, Any]:
        return {"loss": self.loss.name, "tasks": list(self.loss.tasks), "observed": self.observed}


def packed_logits(model: Any, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Logits (B, T, V) of a Llama-style causal-LM task model on a packed batch (input_ids,
    position_ids, segment_ids): its blocks under the block-diagonal mask, then norm and LM head
    as in ``TaskModel.forward``."""
    if model.task != "causal_lm" or model.prompt is not None or not hasattr(model.backbone, "rotary_emb"):
        raise ValueError("packed_logits needs a Llama-style causal-LM task model without soft prompts")
    bb, pos = model.backbone, batch["position_ids"]
    h = bb.embed_tokens(batch["input_ids"])
    mask = packed_attention_mask(batch["segment_ids"], dtype=model.compute_dtype).to(h.device)
    rope = bb.rotary_emb(h, position_ids=pos)
    with model.compute():
        for block in model.blocks:
            h = block(h, attention_mask=mask, position_embeddings=rope, position_ids=pos, use_cache=False)
    return model.logits_from(h.float(), None)
