"""ReadoutNorm (fedft/model/task.py): batch statistics in training, and per-round exact averages."""

from __future__ import annotations

import torch

from fedft.model import ReadoutNorm


def test_round_average_is_the_exact_mean_of_batch_statistics():
    norm = ReadoutNorm(4)
    norm.running_mean.fill_(100.0)  # the received global statistics: not mixed into the round's own
    norm.running_var.fill_(100.0)
    batches = [torch.randn(8, 4) + i for i in range(3)]
    norm.train()
    with norm.round_average():
        for b in batches:
            norm(b)
        norm(torch.randn(1, 4))  # a single-sample batch uses the running statistics, adds nothing
    torch.testing.assert_close(norm.running_mean, torch.stack([b.mean(0) for b in batches]).mean(0))
    torch.testing.assert_close(norm.running_var, torch.stack([b.var(0) for b in batches]).mean(0))
    assert norm.momentum == 0.1  # restored


def test_without_round_average_it_is_an_exponential_average():
    norm = ReadoutNorm(2)
    norm.train()
    b = torch.randn(8, 2)
    norm(b)
    torch.testing.assert_close(norm.running_mean, 0.1 * b.mean(0))
