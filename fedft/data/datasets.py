"""One interface for image classification, text classification and plain LM text.

``load_raw(cfg)`` returns the raw train/validation/test splits (uint8 images or strings, integer
labels), subsampled deterministically to ``data.train_size`` / ``data.test_size``; the validation
split is ``data.val_size`` samples of the training split outside the train subsample, so it is
disjoint from every client's data. ``encode`` turns them
into an :class:`EncodedSplit` whose batches are model-ready dicts: images are resized to a
multiple of the patch size, repeated to 3 channels and normalised with the model's own
preprocessor statistics; text is tokenised with truncation and padding to ``data.max_length``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from fedft.config import DataConfig
from fedft.errors import ConfigError
from fedft.registry import Registry

log = logging.getLogger(__name__)

Modality = Literal["image", "text", "lm", "sft"]


@dataclass
class RawData:
    """Raw splits: ``x`` is a uint8 array (N, H, W[, C]) for images, a list of strings for text, or
    a list of :class:`~fedft.data.sft.SFTExample` for ``sft`` (``y`` is then each example's
    group index, which partitions split by)."""

    modality: Modality
    train_x: Any
    train_y: np.ndarray
    test_x: Any
    test_y: np.ndarray
    label_names: list[str]
    val_x: Any = None
    val_y: np.ndarray | None = None
    system: str | None = None  # SFT: the system turn of every prompt (data.system_prompt)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


DATASETS: Registry[Callable[[DataConfig], RawData]] = Registry("dataset")


def subsample_indices(total: int, n: int, seed: int) -> np.ndarray:
    """The sorted indices ``load_raw`` keeps out of ``total`` samples for ``n`` (0 = all) and ``seed``."""
    if n == 0 or n >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).permutation(total)[:n])


def validation_indices(total: int, train_idx: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The sorted indices of the validation split: ``n`` of the ``total`` training samples outside
    ``train_idx``, drawn with ``seed`` (fewer when fewer remain)."""
    spare = np.setdiff1d(np.arange(total), train_idx)
    if n > len(spare):
        log.warning("data.val_size=%d but only %d training samples lie outside the train subsample; "
                    "validating on %d (lower data.train_size for more)", n, len(spare), len(spare))
    return np.sort(np.random.default_rng([seed, 2]).permutation(spare)[:n])


def _take(x: Any, y: np.ndarray, idx: np.ndarray) -> tuple[Any, np.ndarray]:
    xs = x[idx] if isinstance(x, np.ndarray) else [x[i] for i in idx]
    return xs, y[idx]


def _subsample(x: Any, y: np.ndarray, n: int, seed: int) -> tuple[Any, np.ndarray]:
    if n == 0 or n >= len(y):
        return x, y
    return _take(x, y, subsample_indices(len(y), n, seed))


def load_raw(cfg: DataConfig, seed: int = 0) -> RawData:
    """Load dataset ``cfg.name`` and subsample it (the same seed gives the same samples)."""
    if cfg.name.startswith("hf:"):
        raw = _load_hub(cfg.name[3:])
    else:
        from fedft.data import sft_data  # noqa: F401  (registers the SFT datasets)

        try:
            loader = DATASETS.get(cfg.name)
        except KeyError as e:
            raise ConfigError(f"bad value {cfg.name!r} for data.name; {e.args[0].split('; ')[1]} or hf:<name>") from None
        raw = loader(cfg)
    train_idx = subsample_indices(len(raw.train_y), cfg.train_size, seed)
    val_idx = validation_indices(len(raw.train_y), train_idx, cfg.val_size, seed)
    raw.val_x, raw.val_y = _take(raw.train_x, raw.train_y, val_idx)
    raw.train_x, raw.train_y = _take(raw.train_x, raw.train_y, train_idx)
    raw.test_x, raw.test_y = _subsample(raw.test_x, raw.test_y, cfg.test_size, seed + 1)
    raw.system = cfg.system_prompt or None
    return raw


def _idx_dataset(asset: str, reader_name: str) -> RawData:
    from fedft.assets import asset_dir
    from fedft.data import sources

    root = asset_dir(asset)
    reader = getattr(sources, reader_name)
    trx, try_ = reader(root, "train")
    tex, tey = reader(root, "test")
    return RawData("image", trx, try_.astype(np.int64), tex, tey.astype(np.int64), [str(i) for i in range(10)])


@DATASETS.register("mnist")
def _mnist(cfg: DataConfig) -> RawData:
    return _idx_dataset("mnist", "load_mnist")


@DATASETS.register("fashion-mnist")
def _fashion(cfg: DataConfig) -> RawData:
    raw = _idx_dataset("fashion-mnist", "load_fashion_mnist")
    raw.label_names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                       "Sneaker", "Bag", "Ankle boot"]
    return raw


@DATASETS.register("digits")
def _digits(cfg: DataConfig) -> RawData:
    from fedft.data.sources import load_digits

    trx, try_ = load_digits("train")
    tex, tey = load_digits("test")
    return RawData("image", trx, try_.astype(np.int64), tex, tey.astype(np.int64), [str(i) for i in range(10)])


@DATASETS.register("bbc-news")
def _bbc(cfg: DataConfig) -> RawData:
    from fedft.assets import asset_dir
    from fedft.data.sources import load_bbc_news

    texts, labels, names = load_bbc_news(asset_dir("bbc-news"))
    # a fixed 80/20 split, stratification by the seeded permutation
    perm = np.random.default_rng(1234).permutation(len(labels))
    cut = int(0.8 * len(labels))
    tr, te = np.sort(perm[:cut]), np.sort(perm[cut:])
    return RawData("text", [texts[i] for i in tr], labels[tr].astype(np.int64),
                   [texts[i] for i in te], labels[te].astype(np.int64), list(names))


@DATASETS.register("chatterbot")
def _chatterbot(cfg: DataConfig) -> RawData:
    from fedft.assets import asset_dir
    from fedft.data.sources import load_chatterbot

    pairs = load_chatterbot(asset_dir("chatterbot"))
    texts = [f"{p}\n{r}" for p, r in pairs]
    perm = np.random.default_rng(1234).permutation(len(texts))
    cut = int(0.9 * len(texts))
    zeros = np.zeros(len(texts), dtype=np.int64)
    return RawData("lm", [texts[i] for i in perm[:cut]], zeros[:cut],
                   [texts[i] for i in perm[cut:]], zeros[cut:], ["text"])


@DATASETS.register("synthetic-images")
def _synthetic_images(cfg: DataConfig, n_train: int = 600, n_test: int = 200) -> RawData:
    """10 classes of 16x16 images: a class-specific random 4x4 texture tiled, plus noise.

    The class is visible in every patch, so even a mean-pooled tiny random model can learn it.
    """
    rng = np.random.default_rng(0)
    textures = rng.integers(0, 2, (10, 4, 4)) * 160  # (C, 4, 4)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 10, n)
        x = np.tile(textures[y], (1, 4, 4)) + rng.integers(0, 96, (n, 16, 16))  # (N, 16, 16)
        return x.astype(np.uint8), y.astype(np.int64)

    trx, try_ = make(n_train)
    tex, tey = make(n_test)
    return RawData("image", trx, try_, tex, tey, [str(i) for i in range(10)])


@DATASETS.register("synthetic-text")
def _synthetic_text(cfg: DataConfig, n_train: int = 400, n_test: int = 100) -> RawData:
    """4 topics; each document mixes random filler words with words of its topic."""
    rng = np.random.default_rng(0)
    topics = [["ball", "goal", "team"], ["bank", "market", "price"], ["film", "actor", "music"],
              ["vote", "party", "minister"]]
    filler = ["the", "a", "of", "and", "in", "to", "on", "with", "today", "new"]

    def make(n: int) -> tuple[list[str], np.ndarray]:
        y = rng.integers(0, 4, n)
        docs = [" ".join(rng.choice(filler + topics[c], size=12)) for c in y]
        return docs, y.astype(np.int64)

    trx, try_ = make(n_train)
    tex, tey = make(n_test)
    return RawData("text", trx, try_, tex, tey, ["sport", "business", "entertainment", "politics"])


def _load_hub(name: str) -> RawData:
    """The ordinary Hugging Face datasets path, for users with internet (not used by tests)."""
    import datasets

    ds = datasets.load_dataset(name)
    train, test = ds["train"], ds["test"] if "test" in ds else ds["validation"]
    label_col = "label" if "label" in train.column_names else train.column_names[-1]
    names = train.features[label_col].names if hasattr(train.features[label_col], "names") else None
    if "image" in train.column_names or "img" in train.column_names:
        col = "image" if "image" in train.column_names else "img"
        to_np = lambda split: np.stack([np.asarray(im.convert("RGB")) for im in split[col]])  # noqa: E731
        trx, tex = to_np(train), to_np(test)
        modality: Modality = "image"
    else:
        col = "text" if "text" in train.column_names else train.column_names[0]
        trx, tex = list(train[col]), list(test[col])
        modality = "text"
    try_, tey = np.asarray(train[label_col], np.int64), np.asarray(test[label_col], np.int64)
    names = names or [str(i) for i in range(int(max(try_.max(), tey.max())) + 1)]
    return RawData(modality, trx, try_, tex, tey, list(names))


# --------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class ImagePreprocessor:
    """uint8 (B, H, W[, C]) -> normalised float (B, 3, S, S), S a multiple of the patch size."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    mode: str = "bilinear"  # or "bicubic" (values clamped to [0, 1] before normalising)

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
        return self.from_unit(x if x.dim() == 3 else x.permute(0, 3, 1, 2))

    def from_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Float images in [0, 1], grey (B, H, W) or (B, C, H, W), to the model's input; differentiable."""
        x = x.unsqueeze(1).expand(-1, 3, -1, -1) if x.dim() == 3 else x.expand(-1, 3, -1, -1)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode=self.mode, antialias=self.mode == "bilinear",
                              align_corners=False)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return ((x.clamp(0, 1) if self.mode == "bicubic" else x) - mean) / std


def image_size_for(requested: int, patch: int) -> int:
    """The nearest multiple of ``patch`` to ``requested`` (at least one patch)."""
    return max(patch, int(round(requested / patch)) * patch)


class EncodedSplit:
    """A model-ready split: index it with sample indices to get a batch dict."""

    def __init__(self, inputs: dict[str, Any], labels: torch.Tensor,
                 transform: Callable[[np.ndarray], torch.Tensor] | None = None) -> None:
        self.inputs, self.labels, self.transform = inputs, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def max_tokens(self, idx: np.ndarray) -> int | None:
        """The longest sequence among ``idx`` when batches vary in length; None here, where every
        batch has the same shape."""
        return None

    def batch(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        """The batch of samples ``idx`` (in that order)."""
        out: dict[str, torch.Tensor] = {}
        for k, v in self.inputs.items():
            if k == "pixel_values" and self.transform is not None:
                out[k] = self.transform(v[idx])
            else:
                out[k] = v[torch.as_tensor(idx, dtype=torch.long)]
        out["labels"] = self.labels[torch.as_tensor(idx, dtype=torch.long)]
        return out

    def batches(self, idx: np.ndarray, batch_size: int, shuffle: bool = False,
                rng: np.random.Generator | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """Minibatches over the samples ``idx``; shuffled with ``rng`` when asked."""
        idx = np.asarray(idx)
        if shuffle:
            idx = idx[(rng or np.random.default_rng()).permutation(len(idx))]
        for i in range(0, len(idx), batch_size):
            yield self.batch(idx[i: i + batch_size])


def encode(raw: RawData, split: Literal["train", "val", "test"], preprocess: Any, max_length: int) -> EncodedSplit:
    """Encode one split with the model's preprocessing (image transform or tokenizer)."""
    x, y_raw = {"train": (raw.train_x, raw.train_y), "val": (raw.val_x, raw.val_y),
                "test": (raw.test_x, raw.test_y)}[split]
    y = torch.as_tensor(y_raw, dtype=torch.long)
    if raw.modality == "sft":
        from fedft.data.sft_data import encode_sft

        return encode_sft(list(x), y, preprocess, max_length, raw.system)
    if raw.modality == "image":
        return EncodedSplit({"pixel_values": np.asarray(x)}, y, transform=preprocess)
    enc = tokenize(preprocess, list(x), max_length)
    if raw.modality == "lm":
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        return EncodedSplit(enc, labels)
    return EncodedSplit(enc, y)


def tokenize(tokenizer: Any, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Tokenise with truncation and padding to ``max_length``; returns input_ids and attention_mask."""
    from fedft.data.text import HashTokenizer

    if isinstance(tokenizer, HashTokenizer):
        return tokenizer(texts, max_length)
    enc = tokenizer(texts, truncation=True, padding="max_length", max_length=max_length, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

