"""DPO: direct preference optimisation (Rafailov et al., "Direct Preference Optimization: Your
Language Model is Secretly a Reward Model", NeurIPS 2023), a loss plugin.

What the paper does. For a prompt x with a chosen response y_w and a rejected y_l, and a frozen
reference π_ref (the SFT model):

    L = -log σ(β [(log π(y_w|x) - log π_ref(y_w|x)) - (log π(y_l|x) - log π_ref(y_l|x))])

where log π(y|x) is the sum of the response tokens' log-probabilities; β = 0.1 [paper] controls
the implicit KL penalty. The implicit reward of a response is β (log π - log π_ref).

What fedft does. :func:`sequence_logps` sums the log-probabilities of the labelled (response)
tokens of causal-LM logits, :func:`dpo_loss` is the formula above (mean over pairs), and the
``dpo`` loss plugin reads it off one batch in which the chosen responses are the first half of
the rows and the rejected the second (pair i = rows i and i + B/2) and ``ref_logps`` holds the
reference's sequence log-probs of the same rows, computed once before training
(:func:`reference_logps`; with LoRA the reference is the starting model). :func:`dpo_batch`
builds such a batch; :func:`train_dpo` is a plain loop of AdamW steps over pairs (``trl`` is not a
dependency of fedft).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fedft.data.sft import IGNORE, TokenizedExample, pad_batch
from fedft.losses.base import Loss, register_loss


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) sum over the labelled tokens (labels != IGNORE) of log p(token | before it), from
    causal-LM logits (B, T, V) where position t predicts token t + 1."""
    target = labels[:, 1:]
    mask = target != IGNORE
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logp.gather(-1, target.clamp(min=0)[..., None])[..., 0]
    return (picked * mask).sum(-1)


def dpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
             beta: float = 0.1) -> torch.Tensor:
    """Mean over pairs of -log σ(β [(chosen - ref_chosen) - (rejected - ref_rejected)]), each
    argument a (P,) tensor of sequence log-probabilities."""
    margin = (chosen - ref_chosen) - (rejected - ref_rejected)
    return -F.logsigmoid(beta * margin).mean()


@dataclass(frozen=True)
class DPOOptions:
    beta: float = 0.1  # [paper]

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ValueError(f"DPO beta must be > 0, got {self.beta}")


@register_loss("dpo", DPOOptions)
class DPOLoss(Loss):
    description = "DPO: -log sigmoid(beta (chosen log-ratio - rejected log-ratio)) against a frozen reference"
    sft = False  # its batches are preference pairs with reference log-probs (dpo_batch), not SFT batches

    def __call__(self, logits: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        n = logits.shape[0]
        if n % 2 or "ref_logps" not in batch:
            raise ValueError("a DPO batch holds chosen rows then rejected rows (an even count) and ref_logps")
        lp, ref = sequence_logps(logits, batch["labels"]), batch["ref_logps"].to(torch.float32)
        h = n // 2
        return dpo_loss(lp[:h], lp[h:], ref[:h], ref[h:], self.options.beta)


def dpo_batch(chosen: Sequence[TokenizedExample], rejected: Sequence[TokenizedExample], pad_id: int,
              ref_logps: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Chosen rows then rejected rows, right-padded (:func:`fedft.data.sft.pad_batch`), with the
    reference's sequence log-probs of the same rows when given."""
    if len(chosen) != len(rejected) or not chosen:
        raise ValueError(f"need as many chosen as rejected responses (> 0), got {len(chosen)} and {len(rejected)}")
    batch = pad_batch([*chosen, *rejected], pad_id)
    if ref_logps is not None:
        batch["ref_logps"] = ref_logps
    return batch


def _logps(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    logits = model({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})
    return sequence_logps(logits, batch["labels"])


@torch.no_grad()
def reference_logps(model: torch.nn.Module, items: Sequence[TokenizedExample], pad_id: int,
                    batch_size: int = 8) -> torch.Tensor:
    """(N,) sequence log-probs of the labelled tokens of ``items`` under ``model`` (eval mode)."""
    was = model.training
    model.eval()
    try:
        out = [_logps(model, pad_batch(items[i: i + batch_size], pad_id)) for i in range(0, len(items), batch_size)]
    finally:
        model.train(was)
    return torch.cat(out) if out else torch.zeros(0)


@dataclass
class DPOLog:
    losses: list[float]  # per step
    margins: list[float]  # per step: mean of (chosen - rejected) log-ratio difference, before the step
    accuracies: list[float]  # per step: share of pairs with a positive margin, before the step
    steps: int = 0


def train_dpo(model: torch.nn.Module, chosen: Sequence[TokenizedExample], rejected: Sequence[TokenizedExample],
              pad_id: int, *, beta: float = 0.1, lr: float = 5e-4, epochs: int = 1, batch_size: int = 4,
              seed: int = 0, ref_logps: torch.Tensor | None = None) -> DPOLog:
    """DPO on (chosen[i], rejected[i]) pairs with AdamW on ``model``'s trainable parameters (its
    starting state is the reference unless ``ref_logps``, (2N,) chosen then rejected, is given);
    ``batch_size`` pairs per step, shuffled by ``seed``."""
    if ref_logps is None:
        ref_logps = reference_logps(model, [*chosen, *rejected], pad_id, 2 * batch_size)
    n, loss_fn = len(chosen), DPOLoss(DPOOptions(beta=beta))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    rng, log = np.random.default_rng(seed), DPOLog([], [], [])
    model.train()
    for _ in range(epochs):
        order = rng.permutation(n)
        for at in range(0, n, batch_size):
            idx = order[at: at + batch_size].tolist()
            ref = torch.cat([ref_logps[idx], ref_logps[[n + i for i in idx]]])
            batch = dpo_batch([chosen[i] for i in idx], [rejected[i] for i in idx], pad_id, ref)
            logits = model({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})
            loss = loss_fn(logits, batch)
            with torch.no_grad():
                lp = sequence_logps(logits, batch["labels"]) - ref
                margin = lp[: len(idx)] - lp[len(idx):]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            log.losses.append(float(loss.detach()))
            log.margins.append(float(margin.mean()))
            log.accuracies.append(float((margin > 0).float().mean()))
            log.steps += 1
    model.eval()
    if not all(math.isfinite(x) for x in log.losses):
        raise FloatingPointError("DPO: a non-finite loss")
    return log
