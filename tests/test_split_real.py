"""Split == unsplit on the real DINOv2-small and all-MiniLM-L6-v2 checkpoints (offline assets).

Skipped with the asset error's message when the assets have not been fetched (``fedft assets``).
The reference is the unsplit Hugging Face forward with the prompts spliced in by a hook, as in
``test_split.hf_reference``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from test_split import Tiny, hf_reference

from fedft.errors import AssetError
from fedft.model import build_task_model
from fedft.split import SplitSpec, split_model

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("_one_thread")]

SPECS = [SplitSpec(0, 0), SplitSpec(1, 2), SplitSpec(3, 3)]


def asset(name: str) -> Path:
    try:
        from fedft.assets import asset_dir
    except ImportError as e:  # the assets module is not there yet
        pytest.skip(f"fedft.assets unavailable: {e}")
    try:
        return Path(asset_dir(name))
    except AssetError as e:
        pytest.skip(str(e))


def real_images(size: int = 112) -> torch.Tensor:
    """sklearn's two bundled photos, resized and ImageNet-normalised: (2, 3, size, size)."""
    from sklearn.datasets import load_sample_images

    x = torch.from_numpy(np.stack(load_sample_images().images)).permute(0, 3, 1, 2).float() / 255
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std


def check(tiny: Tiny, batch: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        expected = hf_reference(tiny, batch)
        for spec in SPECS:
            parts = split_model(tiny.model, spec)
            h, mask = parts.head(batch)
            got = parts.tail(parts.body(h, mask), mask)
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4, msg=str(spec))
            assert got.shape == expected.shape and torch.isfinite(got).all()


def test_dinov2_small_split_equals_unsplit() -> None:
    hf = transformers.AutoModel.from_pretrained(asset("dinov2-small")).eval()
    assert hf.config.model_type == "dinov2"
    torch.manual_seed(0)
    model = build_task_model(hf, "classification", num_labels=5, prompt_len=4).eval()
    check(Tiny(hf, model), {"pixel_values": real_images(), "labels": torch.tensor([0, 1])})


def test_minilm_split_equals_unsplit() -> None:
    path = asset("minilm-l6")
    hf = transformers.AutoModel.from_pretrained(path).eval()
    assert hf.config.model_type == "bert"
    tok = transformers.AutoTokenizer.from_pretrained(path)
    texts = ["The central bank raised interest rates again this quarter.",
             "A late goal won the cup final.", "New phones were announced today by the company."]
    enc = tok(texts, padding=True, return_tensors="pt")
    assert (enc["attention_mask"] == 0).any()  # a padded batch
    torch.manual_seed(0)
    model = build_task_model(hf, "classification", num_labels=4, prompt_len=4).eval()
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
             "token_type_ids": enc["token_type_ids"], "labels": torch.tensor([0, 1, 2])}
    check(Tiny(hf, model), batch)
