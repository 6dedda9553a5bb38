"""Central (non-federated) fine-tuning: the first baseline path of ``fedft run``.

Trains the configured method on the whole training split for ``train.epochs`` epochs,
evaluates on the validation split after each epoch and on the test split once, at the end. When only the new task head trains
(``linear_probe``), the frozen features are computed once and the head trains on them: the same
maths, one backbone pass per sample instead of one per epoch.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from fedft.config import ExperimentConfig
from fedft.data.datasets import EncodedSplit, RawData, encode, load_raw
from fedft.errors import ConfigError
from fedft.gen_eval import GenerativeEval
from fedft.losses.wiring import LossRun
from fedft.methods import BaseMethod
from fedft.model.build import build_model
from fedft.model.task import TaskModel
from fedft.outputs import METRICS, RunDir, read_metrics
from fedft.precision import describe
from fedft.precondition import head_preconditioner
from fedft.recipes.apply import apply_central, write_built
from fedft.train import (
    eval_summary,
    evaluate,
    lr_factor,
    make_optimizer,
    seed_everything,
    set_lr_factor,
    train_epoch,
)

log = logging.getLogger(__name__)


def load_task_data(cfg: ExperimentConfig, pre: Any, raw: RawData) -> tuple[EncodedSplit, EncodedSplit | None, EncodedSplit]:
    """Train, validation (None when there is none) and test splits."""
    val = encode(raw, "val", pre, cfg.data.max_length) if len(raw.val_y) else None
    return encode(raw, "train", pre, cfg.data.max_length), val, encode(raw, "test", pre, cfg.data.max_length)


class _Evaluator:
    """Validation after each epoch (a metrics row), the test split once at the end."""

    def __init__(self, net: nn.Module, val: EncodedSplit | None, test: EncodedSplit, cfg: ExperimentConfig,
                 run: RunDir, t0: float, gen: GenerativeEval | None = None) -> None:
        self.net, self.val, self.test, self.bs, self.run, self.t0 = net, val, test, cfg.train.eval_batch_size, run, t0
        self.last: Any = None
        self.gen, self.gen_last = gen, None

    def epoch(self, epoch: int, train_loss: float | None = None) -> Any:
        row: dict[str, Any] = {"epoch": epoch, "train_loss": "" if train_loss is None else train_loss}
        if self.val is not None:
            self.last = evaluate(self.net, self.val, self.bs)
            row.update(val_loss=self.last.loss, val_accuracy=self.last.accuracy)
        if self.gen is not None:
            self.gen_last = row["gen_score"] = self.gen.score(self.net)
        self.run.append_metrics({**row, "seconds": time.time() - self.t0})
        return self.last

    def summary(self) -> dict[str, Any]:
        out = eval_summary(self.last, evaluate(self.net, self.test, self.bs))
        if self.gen is not None:  # the last epoch's evaluation (epoch 0 always runs) is the final model's
            out.update(self.gen.summary(self.gen_last, self.run.path))
        return out


class _HeadOnFeatures(nn.Module):
    """The task head applied to cached features, with the task model's loss."""

    def __init__(self, model: TaskModel) -> None:
        super().__init__()
        object.__setattr__(self, "model", model)  # a reference, not a submodule: only the head trains
        self.head = model.output_layer
        self.norm = model.readout_norm

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = batch["features"]
        return self.head(x if self.norm is None else self.norm(x))

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.loss(logits, batch)


@torch.no_grad()
def cached_features(model: TaskModel, split: EncodedSplit, batch_size: int, desc: str) -> EncodedSplit:
    """Readout features of the frozen model (everything before the task head), once per sample."""
    model.eval()
    feats = []
    idx = np.arange(len(split))
    for batch in tqdm(split.batches(idx, batch_size), total=-(-len(idx) // batch_size), desc=desc,
                      unit="batch", leave=False):
        h, mask = model.embed(batch)
        h = model.run_blocks(model.blocks, h, mask)
        feats.append(model.pool(model.arch.finish(model.backbone, h), mask))
    return EncodedSplit({"features": torch.cat(feats)}, split.labels)


def run_central(cfg: ExperimentConfig, run: RunDir) -> dict[str, Any]:
    """Train and evaluate centrally; writes metrics.csv and returns the summary."""
    t0 = time.time()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    rng = seed_everything(cfg.seed)
    raw = load_raw(cfg.data, cfg.seed)
    model, method, pre = build_model(cfg, raw.num_labels)
    built = apply_central(cfg, raw, model, pre)  # a data recipe builds the training set (fedft/recipes)
    if built is not None:
        write_built(run.path, built)
    train, val, test = load_task_data(cfg, pre, raw)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    net: nn.Module = model
    cache = method.head_only and model.prompt is None and model.task == "classification"
    if cfg.train.optimizer == "lbfgs" and not cache:
        raise ConfigError("train.optimizer=lbfgs needs a head-only method (linear_probe) on a "
                          "classification task; use sgd, adam or adamw")
    run.start_metrics(["epoch", "train_loss", "val_loss", "val_accuracy", "seconds", "gen_score"])
    if cache:
        train = cached_features(model, train, cfg.train.eval_batch_size, "features (train)")
        val = None if val is None else cached_features(model, val, cfg.train.eval_batch_size, "features (val)")
        test = cached_features(model, test, cfg.train.eval_batch_size, "features (test)")
        net = _HeadOnFeatures(model)
        # the head alone is tiny: one thread avoids oversubscription stalls on a busy CPU
        torch.set_num_threads(1)
    ev = _Evaluator(net, val, test, cfg, run, t0, GenerativeEval.for_run(cfg, pre, list(raw.train_x)))
    if cfg.train.optimizer == "lbfgs":
        _lbfgs_probe(net, train, ev, cfg)
        return _finish(cfg, run, ev, len(train), trainable, t0)
    losses = LossRun.for_run(cfg, model, train, val, test)  # a loss plugin (train.loss); None: model.loss
    train_net = net if losses is None else losses.wrap(net)
    opt = make_optimizer(net, cfg.train)
    base_lrs = [g["lr"] for g in opt.param_groups]
    ev.epoch(0)
    if losses is not None:
        losses.observe(model, 0)
    bar = tqdm(range(1, cfg.train.epochs + 1), desc="epochs", unit="epoch")
    for epoch in bar:
        set_lr_factor(opt, base_lrs, lr_factor(cfg.train, epoch - 1, cfg.train.epochs))
        method.on_round_start(model, epoch)
        pre = head_preconditioner(model, cfg.train.kfac_damping)
        train_loss, _ = train_epoch(train_net, train if losses is None else losses.train, np.arange(len(train)),
                                    cfg.train.batch_size, opt, rng, pre=pre)
        result = ev.epoch(epoch, train_loss)
        if losses is not None:
            losses.observe(model, epoch)
        bar.set_postfix(loss=f"{train_loss:.3f}", **({"val_acc": f"{result.accuracy:.3f}"} if result else {}))
    if type(method).finalize is not BaseMethod.finalize:  # merge / interpolate / prune, then re-evaluate
        method.finalize(model)
        ev.epoch(cfg.train.epochs)
    summary = _finish(cfg, run, ev, len(train), trainable, t0)
    if built is not None:
        summary["recipe"] = built.report
    if method.describe():
        summary["method_report"] = method.describe()
    if losses is not None:
        summary["loss_report"] = losses.describe()
    return summary


def _lbfgs_probe(net: nn.Module, train: EncodedSplit, ev: _Evaluator, cfg: ExperimentConfig) -> None:
    """Full-batch L-BFGS on cached features, L2 penalty ``weight_decay / 2 * ||W||^2`` (a convex probe)."""
    opt = torch.optim.LBFGS([p for p in net.parameters() if p.requires_grad], lr=1.0, max_iter=20, history_size=20,
                            line_search_fn="strong_wolfe")
    batch = train.batch(np.arange(len(train)))
    weight = net.head.weight  # type: ignore[union-attr]

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = net.loss(net(batch), batch) + 0.5 * cfg.train.weight_decay * weight.pow(2).sum()  # type: ignore[operator]
        loss.backward()
        return loss

    ev.epoch(0)
    for epoch in tqdm(range(1, cfg.train.epochs + 1), desc="L-BFGS", unit="epoch"):
        ev.epoch(epoch, float(opt.step(closure)))


def _finish(cfg: ExperimentConfig, run: RunDir, ev: _Evaluator, n_train: int, trainable: int,
            t0: float) -> dict[str, Any]:
    if cfg.output.plots:
        from fedft.plots import plot_accuracy

        plot_accuracy(read_metrics(run.file(METRICS)), "epoch", run.file("accuracy.png"))
    return {
        "strategy": "central",
        "method": cfg.method.name,
        "model": cfg.model.name,
        "dataset": cfg.data.name,
        "epochs": cfg.train.epochs,
        "train_samples": n_train,
        "trainable_params": trainable,
        **ev.summary(),
        "wall_seconds": round(time.time() - t0, 2),
        "precision": describe(cfg.train.precision, cfg.model.attention),
    }
