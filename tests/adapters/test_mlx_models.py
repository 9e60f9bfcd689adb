from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest

import adapters.mlx_pack as mlx_pack
from adapters.base import AdapterContext, AdapterLimits
from adapters.errors import AdapterUnavailableError, ModelLoadError
from adapters.manifest import MLXManifest
from adapters.mlx_local import MLXAdapter
from adapters.mlx_models import load_model
from adapters.types import EmbedRequest
from tests.support.tiny_bert import mark_installed, write_tiny_bert

REPULL = "run `model-gateway models pull enc-pack` to re-install it"


def _adapter(models: Path, *, loader: Any = load_model, load_s: float = 60.0, extra: bool = False) -> MLXAdapter:
    specs = [{"name": "enc", "role": "encoder", "pack": "enc-pack", "capabilities": ["embed"]}]
    if extra:
        specs.append({"name": "other", "role": "encoder", "path": "other", "capabilities": ["embed"]})
    manifest = MLXManifest(kind="mlx", name="mlx", models=specs, options={"preload": False})
    limits = AdapterLimits(model_load_s=load_s)
    return MLXAdapter(manifest, AdapterContext(models_dir=models, limits=limits), loader=loader)


def _pack(models: Path) -> Path:
    return mark_installed(write_tiny_bert(models / "enc-pack"), "enc-pack")


async def _embed(adapter: MLXAdapter, model: str = "enc") -> Any:
    with anyio.fail_after(60):
        return await adapter.embed(EmbedRequest(model=model, texts=("the cat sits",)))


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        ("flipped weight byte", "model.safetensors has different content than was installed (sha256 mismatch)"),
        ("edited tokenizer", "tokenizer.json has different content than was installed (sha256 mismatch)"),
        ("size mismatch", "model.safetensors has 10 bytes where"),
        ("no record", "it has no .pack.json (it was not installed by `models pull`)"),
        ("older record", "it was installed by an older version that did not record content hashes"),
    ],
)
async def test_a_pack_that_differs_from_what_was_installed_is_refused_with_the_repull_command(
    tmp_path: Path, damage: str, problem: str
) -> None:
    pack = _pack(tmp_path)
    if damage == "flipped weight byte":
        _flip_last_byte(pack / "model.safetensors")
    elif damage == "edited tokenizer":
        text = (pack / "tokenizer.json").read_text()
        (pack / "tokenizer.json").write_text(text.replace('"rain"', '"pain"', 1))  # six bytes, same size
    elif damage == "size mismatch":
        (pack / "model.safetensors").write_bytes(b"0123456789")
    elif damage == "no record":
        (pack / mlx_pack.MARKER).unlink()
    else:
        record = json.loads((pack / mlx_pack.MARKER).read_text())
        del record["sha256_files"]
        (pack / mlx_pack.MARKER).write_text(json.dumps(record))
    loads: list[str] = []

    def loader(role: str, path: Path, options: Any, *_: Any) -> object:
        loads.append(role)
        return load_model(role, path, options)

    adapter = _adapter(tmp_path, loader=loader)
    try:
        with pytest.raises(ModelLoadError) as info:
            await _embed(adapter)
        assert problem in str(info.value) and str(info.value).endswith(REPULL)
        probe = await adapter.probe()
        assert probe.details["enc"].startswith("failed: model pack 'enc-pack'") and not probe.ok
        if damage in ("size mismatch", "no record", "older record"):
            assert loads == []  # refused from the record alone, before reading any weights
    finally:
        await adapter.aclose()


@pytest.mark.anyio
async def test_a_refused_pack_serves_once_it_is_pulled_again(tmp_path: Path) -> None:
    pack = _pack(tmp_path)
    _flip_last_byte(pack / "model.safetensors")
    adapter = _adapter(tmp_path)
    try:
        with pytest.raises(ModelLoadError, match="sha256 mismatch"):
            await _embed(adapter)
        with pytest.raises(ModelLoadError, match="sha256 mismatch"):
            await _embed(adapter)  # not re-read while nothing changed
        # A pull swaps a whole new directory in.
        fresh = mark_installed(write_tiny_bert(tmp_path / ".staging"), "enc-pack")
        pack.rename(tmp_path / ".old")
        fresh.rename(pack)
        assert len((await _embed(adapter)).vectors) == 1
    finally:
        await adapter.aclose()


@pytest.mark.anyio
async def test_the_content_check_runs_off_the_owner_thread_and_other_models_serve_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _pack(tmp_path)
    write_tiny_bert(tmp_path / "other", seed=3)
    hashing, release = threading.Event(), threading.Event()
    real_digest = mlx_pack.file_digest

    def slow_digest(path: Path, stop: threading.Event | None = None) -> str:
        if threading.current_thread().name.startswith("pack-check"):
            hashing.set()
            assert release.wait(30)
        return real_digest(path, stop)

    monkeypatch.setattr(mlx_pack, "file_digest", slow_digest)
    adapter = _adapter(tmp_path, extra=True)
    try:
        await _embed(adapter, "other")
        done: list[str] = []

        async def embed_pack() -> None:
            await _embed(adapter)
            done.append("enc")

        async with anyio.create_task_group() as tg:
            tg.start_soon(embed_pack)
            with anyio.fail_after(30):
                await anyio.to_thread.run_sync(hashing.wait)
            assert len((await _embed(adapter, "other")).vectors) == 1
            assert done == [] and (await adapter.probe()).details["enc"] == "loading"
            release.set()
        assert done == ["enc"] and (await adapter.probe()).details["enc"] == "ready"
    finally:
        release.set()
        await adapter.aclose()


@pytest.mark.anyio
async def test_a_call_waits_for_a_loading_model_at_most_model_load_s(tmp_path: Path) -> None:
    _pack(tmp_path)
    gate = threading.Event()

    def slow_loader(role: str, path: Path, options: Any, *_: Any) -> object:
        assert gate.wait(30)
        return load_model(role, path, options)

    adapter = _adapter(tmp_path, loader=slow_loader, load_s=0.2)
    try:
        with pytest.raises(AdapterUnavailableError, match=r"still loading after 0\.2 s \(deadlines\.model_load_s\)"):
            await _embed(adapter)
        gate.set()
        assert len((await _embed(adapter)).vectors) == 1  # the load went on without the caller that left
    finally:
        gate.set()
        await adapter.aclose()


def test_the_adapter_context_carries_model_load_s_from_performance_config(tmp_path: Path) -> None:
    from server.config import load_settings

    user = tmp_path / "manifests"
    user.mkdir()
    (user / "performance-config.json").write_text(json.dumps({"deadlines": {"model_load_s": 7.5}}))
    settings = load_settings(manifests_dir=user, env={"HOME": str(tmp_path)})
    assert settings.adapter_context().limits.model_load_s == 7.5
