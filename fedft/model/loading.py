"""Resolve ``model.name`` to a pre-trained backbone and its own preprocessing.

A name is, in this order: ``tiny-<model_type>`` (a random tiny model built from config, for
tests), an offline asset name (``dinov2-small``, ``minilm-l6``, ``smollm2-135m``; fetched with
``fedft assets``), a local directory, or a Hugging Face Hub id loaded the usual way (needs
internet). Loading never reaches a hub for the first three.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedft.config import DataConfig, ModelConfig
from fedft.data.datasets import ImagePreprocessor, image_size_for
from fedft.errors import ConfigError, FedftError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MODEL_ASSETS = ("dinov2-small", "minilm-l6", "smollm2-135m", "smollm2-small")  # smollm2-small: built by `fedft heal`


@dataclass
class LoadedBackbone:
    """A HF model (the base model, or the ``*ForCausalLM`` model for LM tasks) and its source."""

    model: nn.Module
    source: str  # directory, hub id or "tiny-<model_type>"

    @property
    def config(self) -> Any:
        return self.model.config


def resolve(name: str) -> str:
    """Return the local directory or hub id that ``name`` stands for."""
    if name.startswith("tiny-"):
        return name
    if name in MODEL_ASSETS:
        from fedft.assets import asset_dir

        return str(asset_dir(name))
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    return name  # a Hub id: the ordinary from_pretrained path


def load_backbone(cfg: ModelConfig, seed: int = 0) -> LoadedBackbone:
    """Load the model named by ``cfg.name`` in fp32 (with its LM head for causal LM tasks)."""
    import transformers

    source = resolve(cfg.name)
    causal = cfg.task == "causal_lm"
    if source.startswith("tiny-"):
        from fedft.model.tiny import tiny_config

        torch.manual_seed(seed)
        try:
            config = tiny_config(source[len("tiny-"):])
        except KeyError as e:
            raise ConfigError(f"bad value {cfg.name!r} for model.name: {e.args[0]}") from None
        auto = transformers.AutoModelForCausalLM if causal else transformers.AutoModel
        full = auto.from_config(config)
    else:
        auto = transformers.AutoModelForCausalLM if causal else transformers.AutoModel
        try:
            full = auto.from_pretrained(source, dtype=torch.float32)
        except OSError as e:
            raise FedftError(
                f"cannot load model {cfg.name!r} from {source}: {str(e).splitlines()[0]} "
                "(offline? use an asset name such as dinov2-small and run: fedft assets)"
            ) from None
    full.eval()
    return LoadedBackbone(full, source)


def load_preprocessor(backbone: LoadedBackbone, data: DataConfig) -> Any:
    """The model's own preprocessing: an image transform or a tokenizer."""
    config = backbone.config
    if hasattr(config, "patch_size"):  # an image model
        patch = int(config.patch_size)
        size = image_size_for(data.image_size, patch)
        if size != data.image_size:
            log.warning("data.image_size %d is not a multiple of the patch size %d; using %d",
                        data.image_size, patch, size)
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        pre = Path(backbone.source) / "preprocessor_config.json"
        if pre.is_file():
            doc = json.loads(pre.read_text())
            mean = tuple(doc.get("image_mean", mean))  # type: ignore[assignment]
            std = tuple(doc.get("image_std", std))  # type: ignore[assignment]
        return ImagePreprocessor(size, mean, std)
    if backbone.source.startswith("tiny-"):
        from fedft.data.text import HashTokenizer

        return HashTokenizer(int(config.vocab_size))
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(backbone.source)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
