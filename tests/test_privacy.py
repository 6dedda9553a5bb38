"""The privacy attacks on tiny models: exact inversion of an affine head, optimisation inversion of
a head with a block, and label inference from the gradients a tail sends up."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedft.body import codec
from fedft.model.tiny import tiny_task_model
from fedft.privacy import (
    AffineInverse,
    cluster_labels,
    image_scores,
    known_tail_labels,
    label_scores,
    norm_scores,
    optimise_inverse,
)
from fedft.split import SplitSpec, split_model

pytestmark = pytest.mark.usefixtures("_one_thread")

SIZE = 16  # tiny-vit: 16 px, patch 4 -> 16 patches of 16 grey values, hidden 32


def head_map(head_blocks: int):
    """Raw grey images (B, 1, 16, 16) in [0, 1] -> what the client sends (B, T, D)."""
    model = tiny_task_model("vit", prompt_len=2, image_size=SIZE)
    parts = split_model(model, SplitSpec(head_blocks, 0))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def fn(x: torch.Tensor) -> torch.Tensor:
        return parts.head({"pixel_values": (x.expand(-1, 3, -1, -1) - mean) / std})[0]

    return fn


def images(n: int = 6) -> torch.Tensor:
    return torch.rand(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(3))


def test_affine_head_is_inverted_exactly() -> None:
    fn = head_map(0)
    inverse = AffineInverse(fn, (1, SIZE, SIZE))
    x = images()
    with torch.no_grad():
        sent = fn(x)
    rec = inverse(sent)
    assert inverse.rank == SIZE * SIZE
    torch.testing.assert_close(rec, x, atol=1e-4, rtol=0)
    assert image_scores(x, rec)["psnr_db"] > 60
    # after an fp16 wire the recovery is approximate but still near-exact
    rec16 = inverse(codec.decode(codec.encode(sent, "fp16")).float())
    err = (rec16 - x).abs().max()
    assert 0 < err < 0.05


def test_optimisation_inverts_a_head_with_a_block_better_than_a_blank_guess() -> None:
    fn = head_map(1)
    x = images(4)
    with torch.no_grad():
        sent = fn(x)
    rec = optimise_inverse(fn, sent, (1, SIZE, SIZE), steps=300, lr=0.1)
    blank = torch.full_like(x, 0.5)
    assert image_scores(x, rec)["psnr_db"] > image_scores(x, blank)["psnr_db"] + 10


def _tail_and_grads(labels: torch.Tensor):
    model = tiny_task_model("vit", prompt_len=2, image_size=SIZE)
    parts = split_model(model, SplitSpec(0, 0))
    z = torch.randn(len(labels), 1 + 2 + 16, 32, generator=torch.Generator().manual_seed(5))
    zc = z.clone().requires_grad_(True)
    F.cross_entropy(parts.tail(zc, None), labels).backward()  # what the client sends up (batch mean)
    assert zc.grad is not None
    return (lambda t: parts.tail(t, None)), z, zc.grad


def test_known_tail_recovers_labels_from_the_gradients_sent_up() -> None:
    labels = torch.randint(0, 3, (24,), generator=torch.Generator().manual_seed(0))
    tail, z, grads = _tail_and_grads(labels)
    scores = label_scores(labels, known_tail_labels(tail, z, grads, 3))
    assert scores["accuracy"] == 1.0 > scores["chance_accuracy"]


def test_gradient_directions_cluster_by_label() -> None:
    labels = torch.arange(24) % 3
    _, _, grads = _tail_and_grads(labels)
    scores = label_scores(labels, cluster_labels(grads, labels, 3))
    assert scores["accuracy"] > scores["chance_accuracy"] + 0.3


def test_gradient_norm_separates_the_labels_a_confident_tail_gets_wrong() -> None:
    # a tail that predicts class 0 for everything: class-1 samples get large gradients, class-0 small
    logits = torch.tensor([4.0, -4.0]).repeat(20, 1).requires_grad_(True)
    labels = (torch.arange(20) % 4 == 0).long()
    F.cross_entropy(logits, labels).backward()
    assert logits.grad is not None
    scores = label_scores(labels, scores=norm_scores(logits.grad))
    assert scores["auc"] == 1.0 and scores["chance_accuracy"] == 0.75
