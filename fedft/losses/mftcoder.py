"""Multi-task SFT losses keyed on each sample's task id: the loss modes of MFTCoder (Liu et al.,
"MFTCoder: Boosting Code LLMs with Multitask Fine-Tuning", KDD 2024, arXiv 2311.02303;
``weighted_loss_mode`` in codefuse-ai/MFTCoder), and CoBa's dynamic task weights.

The paper trains one model on several code tasks and counters their imbalance by averaging per
task instead of per token. Inputs are causal-LM logits (B, T, V), labels (B, T) with ``IGNORE``
(-100) outside the response, and task ids. Position t predicts token t + 1. With l_ijk the
negative log-likelihood of loss token k of sample j of task i, and T_ij its loss tokens:

- ``token`` (MFTCoder case1): sum of l over all tokens / all tokens (the plain token mean);
- ``sample`` (case2): mean over samples of (sum_k l_ijk / T_ij);
- ``task`` (case3, MFTCoder's default [code]): weighted mean over the tasks present of
  (sum_jk l_ijk / sum_j T_ij), weights ``task_weights`` (default 1);
- ``task_sample`` (case4): weighted mean over tasks of the mean over their samples of the
  per-sample token mean;
- ``focal``: sample-level focal loss on P_ij = mean_k p_ijk: mean_j -alpha (1 - P_ij)^gamma
  log P_ij ([verify] in MFTCoder's paper);
- ``coba`` (the plugin only): ``task`` with the weights of :class:`fedft.losses.coba.CoBa`, fed
  by per-task validation losses through :meth:`MFTCoderLoss.observe`.

What fedft does: both batch layouts of :mod:`fedft.data.sft` work. Padded (``pad_batch``):
``task_ids`` is (B,), a sample is a row. Packed (``pack``): ``task_ids`` is (B, T) and a sample
is one segment of a row (``segment_ids``); a target in another segment than the position that
predicts it (the first token of the next example) is not a loss token, so every mode gives the
same value on a packed batch as on the same examples padded. Samples without loss tokens are
skipped; a batch without any is an error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from fedft.data.sft import IGNORE
from fedft.errors import check
from fedft.losses.base import Loss, register_loss
from fedft.losses.coba import CoBa

Mode = Literal["token", "sample", "task", "task_sample", "focal"]
MODES: tuple[str, ...] = ("token", "sample", "task", "task_sample", "focal")
PluginMode = Literal["token", "sample", "task", "task_sample", "focal", "coba"]
PLUGIN_MODES: tuple[str, ...] = (*MODES, "coba")


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T-1) negative log-likelihood of each next token, and the (B, T-1) mask of loss tokens."""
    target = labels[:, 1:]
    mask = target != IGNORE
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), target.clamp(min=0).flatten(),
                          reduction="none").view_as(target)
    return nll * mask, mask


@dataclass(frozen=True)
class SampleStats:
    """Per sample (only those with loss tokens): NLL sum, loss tokens, sum of token
    probabilities, task id."""

    nll: torch.Tensor
    tokens: torch.Tensor
    prob: torch.Tensor
    tasks: torch.Tensor


def sample_stats(logits: torch.Tensor, labels: torch.Tensor, task_ids: torch.Tensor,
                 segment_ids: torch.Tensor | None = None) -> SampleStats:
    """Per-sample sums of a padded batch (``task_ids`` (B,)) or a packed one (``task_ids`` and
    ``segment_ids`` (B, T): a sample is a segment of a row)."""
    nll, mask = token_nll(logits, labels)
    b, t = mask.shape
    rows = torch.arange(b, device=mask.device)[:, None].expand(b, t)
    if segment_ids is None:
        if task_ids.dim() != 1 or len(task_ids) != b:
            raise ValueError(f"a padded batch needs task_ids of shape ({b},), got {tuple(task_ids.shape)}")
        sample, task = rows, task_ids[:, None].expand(b, t)
    else:
        if task_ids.shape != labels.shape or segment_ids.shape != labels.shape:
            raise ValueError("a packed batch needs task_ids and segment_ids of the labels' shape "
                             f"{tuple(labels.shape)}, got {tuple(task_ids.shape)} and {tuple(segment_ids.shape)}")
        seg = segment_ids[:, 1:]
        mask = mask & (seg == segment_ids[:, :-1]) & (seg > 0)  # no target across examples
        sample, task = rows * (int(segment_ids.max()) + 1) + seg, task_ids[:, 1:]
    if not mask.any():
        raise ValueError("MultiTaskLoss: the batch has no loss tokens")
    ids, inv = torch.unique(sample[mask], return_inverse=True)
    tok_nll = nll[mask]
    zeros = tok_nll.new_zeros(len(ids))
    return SampleStats(zeros.index_add(0, inv, tok_nll), zeros.index_add(0, inv, torch.ones_like(tok_nll)),
                       zeros.index_add(0, inv, torch.exp(-tok_nll)),
                       torch.zeros(len(ids), dtype=torch.long, device=mask.device).scatter(0, inv, task[mask]))


@dataclass(frozen=True)
class MultiTaskLoss:
    mode: Mode = "task"
    task_weights: Mapping[int, float] = field(default_factory=dict)  # task id -> weight (default 1)
    alpha: float = 1.0  # focal
    gamma: float = 2.0  # focal

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"MultiTaskLoss mode {self.mode!r}; valid: {', '.join(MODES)}")

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, task_ids: torch.Tensor,
                 segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        s = sample_stats(logits, labels, task_ids, segment_ids)
        per_sample_mean = s.nll / s.tokens
        if self.mode == "token":
            return s.nll.sum() / s.tokens.sum()
        if self.mode == "sample":
            return per_sample_mean.mean()
        if self.mode == "focal":
            p = s.prob / s.tokens  # P_ij: mean token probability
            return (-self.alpha * (1 - p) ** self.gamma * torch.log(p.clamp(min=1e-12))).mean()
        total, weight = s.nll.new_zeros(()), 0.0
        for t in s.tasks.unique().tolist():
            sel = s.tasks == t
            w = float(self.task_weights.get(int(t), 1.0))
            task_loss = s.nll[sel].sum() / s.tokens[sel].sum() if self.mode == "task" else per_sample_mean[sel].mean()
            total, weight = total + w * task_loss, weight + w
        return total / weight


def _weight_pairs(text: str) -> list[tuple[str, float]]:
    """``"name:w,name:w"`` -> [(name, w), ...] (each w > 0)."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.rpartition(":")
        try:
            w = float(value)
        except ValueError:
            w = float("nan")
        if not sep or not name or not w > 0:
            raise ValueError(f"task weight {part!r} must look like name:weight with weight > 0")
        out.append((name, w))
    return out


def parse_task_weights(text: str, tasks: Sequence[str] = ()) -> dict[int, float]:
    """``"name:w,name:w"`` (task names, or task ids) -> {task id: weight}; ``tasks`` are the names by id."""
    out: dict[int, float] = {}
    for name, w in _weight_pairs(text):
        if name in tasks:
            out[list(tasks).index(name)] = w
        elif name.isdigit():
            out[int(name)] = w
        else:
            raise ValueError(f"task weight for unknown task {name!r}; tasks: {', '.join(tasks) or '(none bound)'}")
    return out


@dataclass(frozen=True)
class MFTCoderOptions:
    """``[loss.mftcoder]``: MFTCoder's multi-task loss modes and CoBa."""

    mode: PluginMode = "task"  # [code] MFTCoder's default weighted_loss_mode (case3)
    alpha: float = 1.0  # [D] focal alpha (MFTCoder's focal settings not stated [verify])
    gamma: float = 2.0  # [D] focal gamma, as in Lin et al.'s focal loss
    task_weights: str = ""  # [D] "name:w,..." fixed weights of task / task_sample (default 1 each)
    coba_warmup: int = 100  # [code] CoBa: uniform weights before this training step
    coba_history: int = 200  # [code] CoBa: sliding window of the slopes, in training steps
    coba_tau: float = 5.0  # [code] CoBa: temperature of the divergence factor

    def __post_init__(self) -> None:
        check(self.mode in PLUGIN_MODES, "loss.mftcoder.mode", ", ".join(PLUGIN_MODES))
        check(self.alpha > 0, "loss.mftcoder.alpha", "a float > 0")
        check(self.gamma >= 0, "loss.mftcoder.gamma", "a float >= 0")
        check(self.coba_warmup >= 0, "loss.mftcoder.coba_warmup", "an integer >= 0")
        check(self.coba_history >= 2, "loss.mftcoder.coba_history", "an integer >= 2")
        check(self.coba_tau > 0, "loss.mftcoder.coba_tau", "a float > 0")
        try:
            _weight_pairs(self.task_weights)  # the syntax; names resolve once the run's tasks are bound
        except ValueError as e:
            check(False, "loss.mftcoder.task_weights", f"comma-separated name:weight pairs, weights > 0 ({e})")


@register_loss("mftcoder", MFTCoderOptions)
class MFTCoderLoss(Loss):
    description = "MFTCoder's multi-task SFT losses (token / sample / task / task_sample / focal) and CoBa"

    def __init__(self, options: MFTCoderOptions | None = None) -> None:
        super().__init__(options)
        o = self.options
        self.coba = CoBa(o.coba_warmup, o.coba_history, o.coba_tau) if o.mode == "coba" else None

    def weights(self) -> dict[int, float]:
        """The task weights in use: CoBa's current ones, else the configured fixed ones."""
        if self.coba is not None:
            return self.coba.weights
        return parse_task_weights(self.options.task_weights, self.tasks)

    def __call__(self, logits: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        o = self.options
        mode = "task" if o.mode == "coba" else o.mode
        return MultiTaskLoss(mode, self.weights(), o.alpha, o.gamma)(
            logits, batch["labels"], batch["task_ids"], batch.get("segment_ids"))

    @property
    def adaptive(self) -> bool:
        return self.coba is not None

    def observe(self, step: int, val_losses: Mapping[int, float]) -> None:
        if self.coba is not None:
            self.coba.observe(step, val_losses)

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.options.mode, "weights": self.weights()}
        if self.coba is not None and self.coba.last:
            out.update(rcs=self.coba.last["rcs"].tolist(), acs=self.coba.last["acs"].tolist(),  # type: ignore[union-attr]
                       df=self.coba.last["df"])
        return out
