"""The task model: a Hugging Face base model, optional soft prompts, a readout and a task head.

``TaskModel.forward`` is written as the three steps that a split cuts apart: ``embed`` (embeddings
and prompt insertion), ``run_blocks`` (transformer blocks) and ``logits_from`` (final norm,
readout, classifier or LM head). :func:`fedft.split.split_model` builds the head, body and tail
from these same methods, so the split and the unsplit model run the same code.

Batches are dicts: images ``{"pixel_values", "labels"}``, text ``{"input_ids", "attention_mask",
"labels"}``. Small random models and synthetic batches for tests are in :mod:`fedft.model.tiny`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from fedft.model.arch import Arch, arch_for
from fedft.model.prompts import SoftPrompt
from fedft.precision import autocast

Task = Literal["classification", "causal_lm"]
Readout = Literal["mean", "cls", "tokens"]
READOUTS = ("mean", "cls", "tokens")
TASKS = ("classification", "causal_lm")


class ReadoutNorm(nn.BatchNorm1d):
    """Standardises pooled features before the classifier (BatchNorm without affine parameters),
    the linear-probing convention of MAE (He et al., 2022). Mean-pooled ViT features share a large
    common offset that makes a linear head ill-conditioned for few-step training; this removes it.

    Its running statistics are buffers, so they travel with the head in federated runs. A batch
    of one sample uses the running statistics (batch statistics of one sample are undefined).
    """

    def __init__(self, dim: int) -> None:
        super().__init__(dim, affine=False)

    @contextmanager
    def round_average(self) -> Iterator[None]:
        """Inside this block the running statistics become the exact average of the batch
        statistics seen (momentum None from a zero count), not an exponential average that still
        weighs the received global statistics: what a client sends is then its own round's
        estimate, and FedAvg combines those."""
        saved, self.momentum = self.momentum, None
        self.num_batches_tracked.zero_()  # type: ignore[union-attr]
        try:
            yield
        finally:
            self.momentum = saved

    @contextmanager
    def batch_statistics(self) -> Iterator[None]:
        """Inside this block the norm standardises with each batch's own statistics (train mode)
        and leaves its running statistics and count as they were: for head features (EL2N
        scoring, the local-loss update), which must not enter the statistics of body features."""
        saved = self.momentum, self.num_batches_tracked.clone(), self.training  # type: ignore[union-attr]
        self.momentum = 0.0
        self.train()
        try:
            yield
        finally:
            self.momentum = saved[0]
            self.num_batches_tracked.copy_(saved[1])  # type: ignore[union-attr]
            self.train(saved[2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] < 2:
            return F.batch_norm(x, self.running_mean, self.running_var, training=False, eps=self.eps)
        return super().forward(x)


class TaskModel(nn.Module):
    """Backbone + optional :class:`SoftPrompt` + readout + output layer, over an :class:`Arch`.

    ``readout``: ``mean`` (masked mean over every non-CLS token, prompts included), ``cls``
    (the CLS token) or ``tokens`` (one output per input token; prompt rows are dropped).
    """

    def __init__(
        self, backbone: nn.Module, arch: Arch, output: nn.Module, task: Task = "classification",
        readout: Readout = "mean", prompt: SoftPrompt | None = None,
        readout_norm: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
        if readout == "cls" and not arch.has_cls:
            raise ValueError(f"readout='cls' needs a CLS token; {type(arch).__name__} has none")
        if task == "causal_lm" and readout != "tokens":
            raise ValueError(f"task='causal_lm' needs readout='tokens', got {readout!r}")
        self.backbone, self.arch, self.prompt = backbone, arch, prompt
        self.task, self.readout = task, readout
        # the output layer keeps its usual name, so parameter names say what they are
        self.output_name = "lm_head" if task == "causal_lm" else "classifier"
        self.add_module(self.output_name, output)
        if readout_norm is not None and readout == "tokens":
            raise ValueError("readout_norm applies to pooled readouts (mean or cls), not tokens")
        self.readout_norm = readout_norm
        self.head_stats: nn.Module | None = None  # fedft.precondition.HeadStats when the head is preconditioned
        # dtype of the transformer blocks' (and an LM head's) compute; fedft.precision, train.precision
        self.compute_dtype = torch.float32

    def compute(self) -> Any:
        """Autocast to :attr:`compute_dtype` on the model's device (a no-op for float32)."""
        device = next(self.parameters()).device
        return autocast(self.compute_dtype, device.type)

    @property
    def output_layer(self) -> nn.Module:
        """The classifier (classification) or the model's LM head (causal LM)."""
        return getattr(self, self.output_name)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.arch.blocks(self.backbone)

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def n_prompts(self) -> int:
        return 0 if self.prompt is None else self.prompt.n_tokens

    def embed(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Embeddings with the prompts spliced in: (B, T + P, D) and the (B, T + P) mask."""
        h, mask = self.arch.embed(self.backbone, batch)  # (B, T, D), (B, T) | None
        if self.prompt is not None:
            at = self.arch.prompt_index
            h, mask = self.prompt.insert(h, at), self.prompt.extend_mask(mask, at)
        return h, mask

    def run_blocks(
        self, blocks: Sequence[nn.Module], h: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Run ``blocks`` on ``h`` (B, T, D) in the compute dtype; no blocks is the identity.

        The output has ``h``'s dtype whatever the compute dtype, so what crosses a cut is the same."""
        if not len(blocks):
            return h
        with self.compute():
            out = self.arch.run_blocks(self.backbone, blocks, h, mask)
        return out.to(h.dtype)

    def pool(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Readout of the normed sequence (B, T, D): (B, D), or (B, T - P, D) for ``tokens``."""
        if self.readout == "cls":
            return h[:, self.arch.cls_index]
        if self.readout == "tokens":
            at = self.arch.prompt_index
            return torch.cat([h[:, :at], h[:, at + self.n_prompts :]], dim=1) if self.prompt else h
        start = 1 if self.arch.has_cls else 0
        h = h[:, start:]  # (B, T - 1, D): prompts + patches / tokens
        if mask is None:
            return h.mean(dim=1)
        m = mask[:, start:, None].to(h.dtype)  # (B, T - 1, 1)
        return (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)

    def logits_from(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Final norm, readout and output layer on the last block's output (B, T, D)."""
        pooled = self.pool(self.arch.finish(self.backbone, h), mask)
        if self.readout_norm is not None:
            pooled = self.readout_norm(pooled)  # (B, D)
        if self.task != "causal_lm":  # a classifier is too small to gain from a lower precision
            return self.output_layer(pooled)
        with self.compute():  # an LM head (D x vocabulary) is one of the largest matmuls
            return self.output_layer(pooled).float()

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Logits: (B, C) for pooled readouts, (B, T, C or V) for ``tokens``."""
        h, mask = self.embed(batch)
        if self.prompt is not None and self.prompt.deep_layers:
            at, dtype = self.arch.prompt_index, h.dtype
            with self.compute():
                for i, block in enumerate(self.blocks):
                    if 0 < i <= self.prompt.deep_layers:
                        h = self.prompt.replace(h, i - 1, at)
                    h = self.arch.run_block(self.backbone, block, h, mask)
            h = h.to(dtype)
        else:
            h = self.run_blocks(self.blocks, h, mask)
        return self.logits_from(h, mask)

    def loss(self, logits: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        """Cross entropy; for causal LM the shifted next-token loss, padding and -100 ignored."""
        if self.task == "causal_lm":
            labels = batch.get("labels", batch["input_ids"]).clone()  # (B, T)
            if batch.get("attention_mask") is not None:
                labels[batch["attention_mask"] == 0] = -100
            logits, labels = logits[:, :-1], labels[:, 1:]
        else:
            labels = batch["labels"]
        return F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(), ignore_index=-100)

    def freeze_backbone(self) -> None:
        """Freeze every backbone weight (prompts and output layer keep their flags)."""
        self.backbone.requires_grad_(False)


def build_task_model(
    backbone: nn.Module, task: Task = "classification", num_labels: int = 0,
    prompt_len: int = 0, deep_prompts: bool = False, readout: Readout | None = None,
    readout_norm: str = "none",
    prompt_dropout: float = 0.0,
) -> TaskModel:
    """Wrap a Hugging Face model (base or ``*For*`` model) as a :class:`TaskModel`.

    ``readout`` defaults to ``mean`` for classification and ``tokens`` for causal LM. Causal LM
    needs a model with an LM head (``LlamaForCausalLM``); classification adds a new
    ``Linear(D, num_labels)``.
    """
    base = getattr(backbone, "base_model", backbone)
    arch = arch_for(base)
    dim = base.config.hidden_size
    if task == "causal_lm":
        output = backbone.get_output_embeddings() if base is not backbone else None
        if output is None:
            raise ValueError("task='causal_lm' needs a model with an LM head, e.g. LlamaForCausalLM")
    elif task == "classification":
        if num_labels < 1:
            raise ValueError(f"classification needs num_labels >= 1, got {num_labels}")
        output = nn.Linear(dim, num_labels)
    else:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    prompt = None
    if prompt_len:
        n_layers = len(arch.blocks(base))
        patch = getattr(base.config, "patch_size", None)
        fan_in = 3 * patch * patch if arch.modality == "image" and isinstance(patch, int) else None
        prompt = SoftPrompt(
            prompt_len, dim, deep_layers=n_layers - 1 if deep_prompts else 0,
            dropout=prompt_dropout, fan_in=fan_in,
        )
    elif deep_prompts:
        raise ValueError("deep_prompts=True needs prompt_len >= 1")
    readout = readout or ("tokens" if task == "causal_lm" else "mean")
    norm = ReadoutNorm(dim) if readout_norm == "batchnorm" else None
    return TaskModel(base, arch, output, task=task, readout=readout, prompt=prompt, readout_norm=norm)
