"""``build_model``: the configured backbone, fine-tuning method and task model of an experiment.

Every training path (central, the federated client and server, evaluation) builds its model here,
so they all start from the same weights for the same config and seed.
"""

from __future__ import annotations

from typing import Any

import torch

from fedft.config import ExperimentConfig
from fedft.methods import METHODS, BaseMethod
from fedft.model.loading import load_backbone, load_preprocessor
from fedft.model.task import TaskModel, build_task_model
from fedft.precision import DTYPES, attention, resolve


def build_model(cfg: ExperimentConfig, num_labels: int) -> tuple[TaskModel, BaseMethod, Any]:
    """Backbone + method + task model, and the model's own preprocessing."""
    method = METHODS.get(cfg.method.name)(cfg.method)
    bb = load_backbone(cfg.model, cfg.seed)
    pre = load_preprocessor(bb, cfg.data)
    torch.manual_seed(cfg.seed)
    readout = None if cfg.model.task == "causal_lm" else cfg.model.readout
    model = build_task_model(
        bb.model, task=cfg.model.task, num_labels=num_labels, prompt_len=method.prompt_tokens(),
        deep_prompts=method.deep_prompts(), readout=readout, prompt_dropout=cfg.method.prompt_dropout,
        readout_norm=cfg.model.readout_norm if cfg.model.task == "classification" else "none",
    )
    method.apply(model)
    set_precision(model, cfg.train.precision, cfg.model.attention)
    if cfg.split.noise > 0:  # a split-strategy defence (checked by fedft.config.validate_names)
        from fedft.split.defence import add_activation_noise

        add_activation_noise(model, cfg.split.head_blocks, cfg.split.noise)
    if cfg.train.head_preconditioner == "kfac" and cfg.model.task == "classification":
        from fedft.precondition import HeadStats

        model.head_stats = HeadStats(model.output_layer.in_features)
    return model, method, pre


def set_precision(model: TaskModel, precision: str, attn: str = "auto") -> None:
    """Set the model's compute dtype and attention kernel (``train.precision``, ``model.attention``)."""
    device = next(model.parameters()).device
    used = resolve(precision, device)
    model.compute_dtype = DTYPES[used]
    kernel = attention(attn, used, device)
    if getattr(model.backbone.config, "_attn_implementation", kernel) != kernel:
        model.backbone.set_attn_implementation(kernel)
