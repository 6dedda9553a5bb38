"""Multi-task SFT losses keyed on each sample's task id (the ``MultiTaskLoss`` interface; the
loss modes of MFTCoder, Liu et al., KDD 2024).

Inputs are causal-LM logits (B, T, V), labels (B, T) with ``IGNORE`` (-100) outside the
response, and a task id per sample (B,). Position t predicts token t + 1. With l_ijk the
negative log-likelihood of loss token k of sample j of task i, and T_ij its loss tokens:

- ``token`` (MFTCoder case1): sum of l over all tokens / all tokens;
- ``sample`` (case2): mean over samples of (sum_k l_ijk / T_ij);
- ``task`` (case3, MFTCoder's default [code]): weighted mean over the tasks present of
  (sum_jk l_ijk / sum_j T_ij), weights ``task_weights`` (default 1);
- ``task_sample`` (case4): weighted mean over tasks of the mean over their samples of the
  per-sample token mean;
- ``focal``: sample-level focal loss on P_ij = mean_k p_ijk: mean_j -alpha (1 - P_ij)^gamma
  log P_ij ([verify] in MFTCoder's paper).

Samples without loss tokens are skipped; a batch without any is an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from fedft.data.sft import IGNORE
from fedft.losses.base import Loss, register_loss

Mode = Literal["token", "sample", "task", "task_sample", "focal"]
MODES: tuple[str, ...] = ("token", "sample", "task", "task_sample", "focal")


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T-1) negative log-likelihood of each next token, and the (B, T-1) mask of loss tokens."""
    target = labels[:, 1:]
    mask = target != IGNORE
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), target.clamp(min=0).flatten(),
                          reduction="none").view_as(target)
    return nll * mask, mask


@dataclass(frozen=True)
class MultiTaskLoss:
    mode: Mode = "task"
    task_weights: Mapping[int, float] = field(default_factory=dict)  # task id -> weight (default 1)
    alpha: float = 1.0  # focal
    gamma: float = 2.0  # focal

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"MultiTaskLoss mode {self.mode!r}; valid: {', '.join(MODES)}")

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        nll, mask = token_nll(logits, labels)
        tokens = mask.sum(1)  # (B,) T_ij
        keep = tokens > 0
        if not keep.any():
            raise ValueError("MultiTaskLoss: the batch has no loss tokens")
        per_sample_sum = nll.sum(1)[keep]
        tokens, tasks = tokens[keep], task_ids[keep]
        per_sample_mean = per_sample_sum / tokens
        if self.mode == "token":
            return per_sample_sum.sum() / tokens.sum()
        if self.mode == "sample":
            return per_sample_mean.mean()
        if self.mode == "focal":
            p = torch.exp(-nll).masked_fill(~mask, 0).sum(1)[keep] / tokens  # P_ij: mean token probability
            return (-self.alpha * (1 - p) ** self.gamma * torch.log(p.clamp(min=1e-12))).mean()
        total, weight = logits.new_zeros((), dtype=torch.float32), 0.0
        for t in tasks.unique().tolist():
            sel = tasks == t
            w = float(self.task_weights.get(int(t), 1.0))
            task_loss = (per_sample_sum[sel].sum() / tokens[sel].sum() if self.mode == "task"
                         else per_sample_mean[sel].mean())
            total, weight = total + w * task_loss, weight + w
        return total / weight


@dataclass(frozen=True)
class MFTCoderOptions:
    mode: Mode = "task"  # [code] MFTCoder's default (case3)
    alpha: float = 1.0  # focal
    gamma: float = 2.0  # focal


@register_loss("mftcoder", MFTCoderOptions)
class MFTCoderLoss(Loss):
    description = "multi-task SFT loss keyed on task id (token / sample / task / task_sample / focal)"

    def __call__(self, logits: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        o = self.options
        return MultiTaskLoss(o.mode, alpha=o.alpha, gamma=o.gamma)(logits, batch["labels"], batch["task_ids"])
