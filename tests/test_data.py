"""Dataset interface and preprocessing driven by the model's own config."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedft.config import DataConfig
from fedft.data.datasets import ImagePreprocessor, encode, image_size_for, load_raw
from fedft.data.text import HashTokenizer
from fedft.errors import ConfigError


def test_image_preprocessing_resizes_repeats_and_normalises():
    pre = ImagePreprocessor(size=28, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    imgs = np.full((2, 14, 14), 255, dtype=np.uint8)
    x = pre(imgs)
    assert x.shape == (2, 3, 28, 28)
    torch.testing.assert_close(x, torch.full_like(x, 2.0))  # (1 - 0.5) / 0.25


def test_rgb_images_keep_their_channels():
    pre = ImagePreprocessor(size=8, mean=(0, 0, 0), std=(1, 1, 1))
    imgs = np.zeros((1, 8, 8, 3), dtype=np.uint8)
    imgs[..., 1] = 255
    x = pre(imgs)
    assert x.shape == (1, 3, 8, 8) and x[0, 1].min() == 1 and x[0, 0].max() == 0


@pytest.mark.parametrize("req, patch, want", [(112, 14, 112), (100, 14, 98), (3, 14, 14), (32, 4, 32)])
def test_image_size_multiple_of_patch(req, patch, want):
    assert image_size_for(req, patch) == want


def test_subsample_is_deterministic_and_sized():
    cfg = DataConfig(name="synthetic-images", train_size=100, test_size=50)
    a, b = load_raw(cfg, seed=3), load_raw(cfg, seed=3)
    assert len(a.train_y) == 100 and len(a.test_y) == 50
    assert np.array_equal(a.train_x, b.train_x)
    c = load_raw(cfg, seed=4)
    assert not np.array_equal(a.train_y, c.train_y)


def test_text_tokenised_with_truncation_and_padding():
    raw = load_raw(DataConfig(name="synthetic-text", train_size=10, test_size=5, max_length=8))
    split = encode(raw, "train", HashTokenizer(99), max_length=8)
    batch = split.batch(np.arange(4))
    assert batch["input_ids"].shape == (4, 8) and batch["attention_mask"].shape == (4, 8)
    assert batch["input_ids"][:, 0].eq(1).all()  # CLS first
    assert batch["labels"].shape == (4,)


def test_batches_cover_indices_once():
    raw = load_raw(DataConfig(name="synthetic-images", train_size=50, test_size=10))
    split = encode(raw, "train", ImagePreprocessor(16, (0, 0, 0), (1, 1, 1)), 0)
    seen = torch.cat([b["labels"] for b in split.batches(np.arange(50), 16, shuffle=True,
                                                          rng=np.random.default_rng(0))])
    assert len(seen) == 50 and torch.equal(seen.sort().values, split.labels.sort().values)


def test_unknown_dataset_is_a_config_error():
    with pytest.raises(ConfigError, match="data.name"):
        load_raw(DataConfig(name="cifar10"))


def test_validation_split_is_drawn_outside_the_clients_training_samples():
    full = load_raw(DataConfig(name="synthetic-images", train_size=0, val_size=0, test_size=0))
    raw = load_raw(DataConfig(name="synthetic-images", train_size=100, val_size=50, test_size=0), seed=3)
    assert len(raw.train_y) == 100 and len(raw.val_y) == 50 and len(raw.test_y) == len(full.test_y)
    rows = {x.tobytes(): i for i, x in enumerate(full.train_x)}
    train = {rows[x.tobytes()] for x in raw.train_x}
    val = {rows[x.tobytes()] for x in raw.val_x}
    assert len(train) == 100 and len(val) == 50 and not train & val  # disjoint, no duplicates
    again = load_raw(DataConfig(name="synthetic-images", train_size=100, val_size=50, test_size=0), seed=3)
    assert np.array_equal(again.val_x, raw.val_x)  # reproducible from the seed
    # fewer spare samples than asked: what remains, never the clients' samples
    most = load_raw(DataConfig(name="synthetic-images", train_size=580, val_size=50), seed=3)
    assert len(most.val_y) == len(full.train_y) - 580
