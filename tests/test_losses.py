"""Multi-task SFT losses (fedft.losses) against hand-computed examples."""

from __future__ import annotations

import math

import pytest
import torch

from fedft.losses import MultiTaskLoss, token_nll

NO = -100  # not a loss token


def batch():
    """Three samples, vocabulary 2; logits chosen so each loss token's NLL is known:
    p(correct) = 1/2 (nll = log 2) or 1/(1 + e) (nll = log(1 + e))."""
    e = math.e
    logits = torch.zeros(3, 4, 2)
    logits[0, 1, 0] = 1.0  # sample 0: token 2 (label 1) has p = 1/(1+e); token 3 (label 0) p = 1/2
    labels = torch.tensor([[NO, NO, 1, 0], [NO, 0, NO, NO], [NO, NO, NO, 1]])
    task_ids = torch.tensor([0, 0, 1])
    a, b = math.log(1 + e), math.log(2)
    return logits, labels, task_ids, a, b


def test_token_nll_masks_everything_but_the_response():
    logits, labels, _, a, b = batch()
    nll, mask = token_nll(logits, labels)
    assert mask.tolist() == [[False, True, True], [True, False, False], [False, False, True]]
    assert nll[0].tolist() == pytest.approx([0, a, b]) and nll[1].tolist() == pytest.approx([b, 0, 0])


@pytest.mark.parametrize("mode, want", [
    ("token", lambda a, b: (a + b + b + b) / 4),
    ("sample", lambda a, b: ((a + b) / 2 + b + b) / 3),
    ("task", lambda a, b: ((a + b + b) / 3 + b) / 2),
    ("task_sample", lambda a, b: (((a + b) / 2 + b) / 2 + b) / 2),
])
def test_each_mode_against_its_formula(mode, want):
    logits, labels, tasks, a, b = batch()
    assert float(MultiTaskLoss(mode)(logits, labels, tasks)) == pytest.approx(want(a, b), rel=1e-6)


def test_task_weights_and_focal():
    logits, labels, tasks, a, b = batch()
    weighted = MultiTaskLoss("task", task_weights={1: 3.0})(logits, labels, tasks)
    assert float(weighted) == pytest.approx(((a + b + b) / 3 + 3 * b) / 4, rel=1e-6)
    p = [(1 / (1 + math.e) + 0.5) / 2, 0.5, 0.5]  # mean token probability per sample
    focal = sum(-(1 - q) ** 2 * math.log(q) for q in p) / 3
    assert float(MultiTaskLoss("focal")(logits, labels, tasks)) == pytest.approx(focal, rel=1e-6)


def test_bad_input():
    logits, labels, tasks, _, _ = batch()
    with pytest.raises(ValueError, match="no loss tokens"):
        MultiTaskLoss()(logits, torch.full_like(labels, NO), tasks)
    with pytest.raises(ValueError, match="valid"):
        MultiTaskLoss("nope")  # type: ignore[arg-type]
    # gradients flow to the logits
    lg = logits.clone().requires_grad_(True)
    MultiTaskLoss("task")(lg, labels, tasks).backward()
    assert lg.grad is not None and lg.grad.abs().sum() > 0
