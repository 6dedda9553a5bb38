"""Optimizers of fedft/train.py: learning-rate groups and the separate prompt optimizer."""

from __future__ import annotations

import torch

from fedft.config import TrainConfig
from fedft.model.tiny import tiny_batch, tiny_task_model
from fedft.train import PairedOptimizer, make_optimizer, set_lr_factor


def test_prompts_get_their_own_optimizer_and_schedules_reach_both():
    model = tiny_task_model("vit", prompt_len=2)
    model.freeze_backbone()
    opt = make_optimizer(model, TrainConfig(optimizer="sgd", lr=0.1, head_lr=0.2, prompt_lr=0.01,
                                            prompt_optimizer="adam"))
    assert isinstance(opt, PairedOptimizer)
    sgd, adam = opt.optimizers
    assert isinstance(sgd, torch.optim.SGD) and isinstance(adam, torch.optim.Adam)
    assert [g["name"] for g in adam.param_groups] == ["prompt"]
    assert model.prompt.prompt_embeddings in adam.param_groups[0]["params"]
    set_lr_factor(opt, [g["lr"] for g in opt.param_groups], 0.5)
    assert adam.param_groups[0]["lr"] == 0.005 and [g["lr"] for g in sgd.param_groups] == [0.1]  # head 0.2 x 0.5
    before = model.prompt.prompt_embeddings.detach().clone()
    batch = tiny_batch("vit", batch_size=4)
    model.loss(model(batch), batch).backward()
    opt.step()
    # Adam's first step moves every prompt entry by about lr (sign of the gradient), SGD's would not
    moved = (model.prompt.prompt_embeddings.detach() - before).abs()
    assert torch.allclose(moved[moved > 0], torch.full_like(moved[moved > 0], 0.005), rtol=1e-2)
    assert adam.state and sgd.state
    opt.state.clear()
    assert not adam.state and not sgd.state
    opt.zero_grad()
    assert model.prompt.prompt_embeddings.grad is None


def test_same_optimizer_by_default():
    model = tiny_task_model("vit", prompt_len=2)
    assert isinstance(make_optimizer(model, TrainConfig(optimizer="sgd")), torch.optim.SGD)
