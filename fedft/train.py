"""Local training and evaluation loops shared by central runs and federated clients."""

from __future__ import annotations

import math
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fedft.config import ExperimentConfig, TrainConfig
from fedft.data.datasets import EncodedSplit
from fedft.precision import weight_cast_cache
from fedft.precondition import HeadPreconditioner


def seed_everything(seed: int) -> np.random.Generator:
    """Seed torch and return a numpy generator for data order."""
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """Trainable parameters grouped by learning rate: prompts, the new task head, the rest."""
    groups: dict[str, list[nn.Parameter]] = {"prompt": [], "head": [], "rest": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf.startswith("prompt_") or ".prompt_" in name or name.startswith("prompt"):
            groups["prompt"].append(p)
        elif name.startswith("classifier.") or ".classifier." in name:
            groups["head"].append(p)
        else:
            groups["rest"].append(p)
    lrs = {"prompt": cfg.prompt_lr or cfg.lr, "head": cfg.head_lr or cfg.lr, "rest": cfg.lr}
    return [{"params": ps, "lr": lrs[k], "name": k} for k, ps in groups.items() if ps]


class PairedOptimizer:
    """Two optimizers stepped together (``train.prompt_optimizer``: prompts on their own).

    Exposes what the training loops use: ``param_groups`` (the groups of both, the same dicts, so
    learning-rate schedules reach both), ``state`` (``clear()`` resets both), ``step``,
    ``zero_grad``, ``state_dict``."""

    def __init__(self, first: torch.optim.Optimizer, second: torch.optim.Optimizer) -> None:
        self.optimizers = (first, second)
        self.param_groups = [*first.param_groups, *second.param_groups]

    class _State:
        def __init__(self, owner: PairedOptimizer) -> None:
            self.owner = owner

        def clear(self) -> None:
            for o in self.owner.optimizers:
                o.state.clear()

    @property
    def state(self) -> _State:
        return PairedOptimizer._State(self)

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}


def _build(groups: list[dict], name: str, cfg: TrainConfig) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The configured optimizer over the trainable parameters of ``model``."""
    groups = param_groups(model, cfg)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    if cfg.optimizer == "lbfgs":
        raise ValueError("lbfgs is a full-batch optimizer for cached-feature probes only")
    prompts = [g for g in groups if g["name"] == "prompt"]
    if cfg.prompt_optimizer != "same" and prompts:
        rest = [g for g in groups if g["name"] != "prompt"]
        if rest:
            return PairedOptimizer(_build(rest, cfg.optimizer, cfg), _build(prompts, cfg.prompt_optimizer, cfg))  # type: ignore[return-value]
        return _build(prompts, cfg.prompt_optimizer, cfg)
    return _build(groups, cfg.optimizer, cfg)


def lr_factor(cfg: TrainConfig, step: int, total: int) -> float:
    """Multiplier of the base learning rates at ``step`` of ``total`` (epochs or rounds)."""
    if cfg.schedule == "cosine" and total > 1:
        return 0.5 * (1 + math.cos(math.pi * step / total))
    return 1.0


def set_lr_factor(opt: torch.optim.Optimizer, base: list[float], factor: float) -> None:
    for g, lr in zip(opt.param_groups, base, strict=True):
        g["lr"] = lr * factor


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    n: int


def eval_summary(val: EvalResult | None, test: EvalResult) -> dict[str, Any]:
    """The summary's evaluation keys from the last validation and the one test evaluation;
    ``final_*`` are the test numbers."""
    return {
        "final_accuracy": test.accuracy, "final_loss": test.loss,
        "val_accuracy": None if val is None else val.accuracy, "val_loss": None if val is None else val.loss,
        "test_accuracy": test.accuracy, "test_loss": test.loss,
        "val_samples": 0 if val is None else val.n, "test_samples": test.n,
    }


def accuracy_counts(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """(correct, counted): per sample for classification, per next token for causal LM logits."""
    if logits.dim() == 3:  # (B, T, V) causal LM: position t predicts token t + 1
        pred = logits[:, :-1].argmax(-1)
        tgt = labels[:, 1:]
        keep = tgt != -100
        return int((pred[keep] == tgt[keep]).sum()), int(keep.sum())
    return int((logits.argmax(-1) == labels).sum()), len(labels)


@torch.no_grad()
def evaluate(model: nn.Module, split: EncodedSplit, batch_size: int, idx: np.ndarray | None = None) -> EvalResult:
    """Mean loss and accuracy of ``model`` (anything with ``forward(batch)`` and ``loss``) on a split."""
    was = model.training
    model.eval()
    idx = np.arange(len(split)) if idx is None else idx
    loss_sum, correct, count, n = 0.0, 0, 0, 0
    with weight_cast_cache(model):
        for batch in split.batches(idx, batch_size):
            logits = model(batch)
            b = len(batch["labels"])
            loss_sum += float(model.loss(logits, batch)) * b  # type: ignore[operator]
            c, k = accuracy_counts(logits, batch["labels"])
            correct, count, n = correct + c, count + k, n + b
    model.train(was)
    return EvalResult(loss_sum / max(n, 1), correct / max(count, 1), n)


def train_epoch(
    model: nn.Module, split: EncodedSplit, idx: np.ndarray, batch_size: int,
    opt: torch.optim.Optimizer, rng: np.random.Generator, batches: Iterable | None = None,
    pre: HeadPreconditioner | None = None,
) -> tuple[float, int]:
    """One epoch of minibatch training over samples ``idx``; returns (mean loss, samples).

    With ``pre``, the task head's gradient is preconditioned before each step and the epoch's
    input statistics are stored at the end (:mod:`fedft.precondition`).
    """
    model.train()
    loss_sum, n = 0.0, 0
    for batch in batches if batches is not None else split.batches(idx, batch_size, shuffle=True, rng=rng):
        opt.zero_grad(set_to_none=True)
        with pre.active() if pre is not None else nullcontext():
            logits = model(batch)
        loss = model.loss(logits, batch)  # type: ignore[operator]
        loss.backward()
        if pre is not None:
            pre.apply()
        opt.step()
        b = len(batch["labels"])
        loss_sum, n = loss_sum + float(loss.detach()) * b, n + b
    if pre is not None:
        pre.finish()
    return loss_sum / max(n, 1), n


class Proximal:
    """FedProx's client-side term: adds ``mu (w - w_global)`` to each trained tensor's gradient,
    the gradient of ``mu/2 ||w - w_global||^2`` (Li et al. 2020), with ``w_global`` the round's
    download."""

    def __init__(self, params: list[nn.Parameter], mu: float) -> None:
        self.params, self.mu = params, mu
        self.anchor = [p.detach().clone() for p in params]

    @classmethod
    def for_config(cls, cfg: ExperimentConfig, params: list[nn.Parameter]) -> Proximal | None:
        """The term for ``federation.aggregator = "fedprox"`` with mu > 0, else None."""
        if cfg.federation.aggregator != "fedprox":
            return None
        mu = cfg.federation.options_for("fedprox").proximal_mu
        return cls(params, mu) if mu > 0 and params else None

    @torch.no_grad()
    def apply(self) -> None:
        for p, w0 in zip(self.params, self.anchor, strict=True):
            if p.grad is not None:
                p.grad.add_(p.detach() - w0, alpha=self.mu)
