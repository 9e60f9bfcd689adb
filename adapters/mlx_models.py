"""The models of an MLX adapter: where each one's files are, and loading them on the owner thread.

A model named by `pack` is served only once its files match the record `models pull` wrote: sizes are
checked before loading, contents are hashed on a helper thread while the model loads (the owner thread
serves other models' jobs meanwhile), and a pack that differs is refused with the command that re-installs
it. A model named by `path` is the user's own directory and is loaded as it is.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from adapters.base import ModelInfo
from adapters.errors import ModelLoadError, safe_detail
from adapters.manifest import MLXModelSpec, MLXOptions
from adapters.mlx_pack import (
    MARKER,
    ContentCheck,
    PackContentError,
    content_problem,
    read_record,
    repull_hint,
    size_problem,
)
from adapters.types import Capability

Role = Literal["encoder", "cross-encoder", "lm"]
ROLE_CAPABILITIES: dict[str, frozenset[Capability]] = {
    "encoder": frozenset({"embed", "rerank"}),
    "cross-encoder": frozenset({"rerank"}),
    "lm": frozenset({"chat"}),
}
# (role, directory, options, between): `between()` serves the jobs waiting while a slow load goes on.
Loader = Callable[[str, Path, MLXOptions, Callable[[], object]], object]


def _nothing() -> object:
    return None


def load_model(role: str, path: Path, options: MLXOptions, between: Callable[[], object] = _nothing) -> object:
    """The default loader; runs on the owner thread, so MLX is imported there."""
    if role == "encoder":
        from adapters.mlx_bert import SentenceEncoder

        return SentenceEncoder.load(path, fast_gelu=options.fast_gelu, dtype=options.dtype)
    if role == "cross-encoder":
        from adapters.mlx_bert import CrossEncoder

        return CrossEncoder.load(path, fast_gelu=options.fast_gelu, dtype=options.dtype)
    try:
        from adapters.mlx_chat import ChatModel
    except ImportError as exc:
        raise ModelLoadError(f"MLX chat support is unavailable: {exc}") from exc
    return ChatModel.load(path, between)


def model_dir(spec: MLXModelSpec, models_dir: Path) -> Path:
    """Where a model's files are: `path` (relative to models_dir) or the installed pack."""
    if spec.path:
        return models_dir / Path(spec.path).expanduser()
    assert spec.pack is not None
    return models_dir / spec.pack


@dataclass(eq=False)
class Slot:
    """One model's state; `state` and `model` are written on the owner thread only."""

    spec: MLXModelSpec
    path: Path
    capabilities: frozenset[Capability]
    state: Literal["idle", "loading", "ready", "failed"] = "idle"
    error: str | None = None
    failed_on: tuple[Any, ...] | None = None  # the files as they were when loading failed
    model: object | None = None

    def runnable_inside_another_job(self) -> bool:
        """A job for this model may not run inside the job that is loading it."""
        return self.state != "loading"


def ensure_loaded(slot: Slot, loader: Loader, options: MLXOptions, serve_others: Callable[[], bool]) -> object:
    """The slot's model, loading (and checking) it first; `serve_others()` runs queued jobs, True means stop."""
    if slot.state == "ready":
        return slot.model
    # A failed load is retried once the files change (a pack pulled or repaired while serving).
    if slot.state == "failed" and slot.failed_on == _files_stamp(slot):
        raise ModelLoadError(f"MLX model {slot.spec.name!r} failed to load: {slot.error}")
    slot.state = "loading"
    try:
        slot.model = _load_checked(slot, loader, options, serve_others)
    except Exception as exc:
        slot.error = safe_detail(str(exc)) or type(exc).__name__
        slot.state, slot.model, slot.failed_on = "failed", None, _files_stamp(slot)
        raise ModelLoadError(f"MLX model {slot.spec.name!r} failed to load: {slot.error}") from exc
    slot.state, slot.error = "ready", None
    return slot.model


def _load_checked(slot: Slot, loader: Loader, options: MLXOptions, serve_others: Callable[[], bool]) -> object:
    missing = missing_files(slot)
    if missing is not None:
        raise ModelLoadError(missing)
    check = _start_content_check(slot) if slot.spec.pack and not slot.spec.path else None
    try:
        model = loader(slot.spec.role, slot.path, options, serve_others)
    except BaseException:
        if check is not None:
            check.cancel()
        raise
    if check is not None and (problem := check.wait(serve_others)) is not None:
        raise ModelLoadError(_pack_refusal(slot, problem))
    return model


def _start_content_check(slot: Slot) -> ContentCheck:
    try:
        record = read_record(slot.path)
    except PackContentError as exc:
        raise ModelLoadError(_pack_refusal(slot, str(exc))) from exc
    if record is None:
        raise ModelLoadError(_pack_refusal(slot, f"it has no {MARKER} (it was not installed by `models pull`)"))
    problem = size_problem(slot.path, record)
    if problem is None and record.digests is None:
        problem = content_problem(slot.path, record)  # says the record predates content hashes; reads nothing
    if problem is not None:
        raise ModelLoadError(_pack_refusal(slot, problem))
    return ContentCheck(slot.path, record)


def _pack_refusal(slot: Slot, problem: str) -> str:
    name = slot.spec.pack or slot.spec.name
    return f"model pack {name!r} at {slot.path} does not match what was installed: {problem}; {repull_hint(name)}"


def _files_stamp(slot: Slot) -> tuple[Any, ...]:
    """Cheap identity of the model's files (names, sizes, mtimes of the top level and the record)."""
    try:
        entries = sorted(os.scandir(slot.path), key=lambda e: e.name)
        return tuple((e.name, e.stat().st_size, e.stat().st_mtime_ns, e.inode()) for e in entries)
    except OSError:
        return ()


def missing_files(slot: Slot) -> str | None:
    if slot.path.is_dir() and (slot.path / "config.json").is_file():
        return None
    if slot.spec.path:
        return f"model directory {slot.path} does not exist or has no config.json"
    return (
        f"model pack {slot.spec.pack!r} is not installed (looked in {slot.path}); "
        f"run `model-gateway models pull {slot.spec.pack}`"
    )


def describe(slot: Slot) -> str:
    if slot.state == "failed":
        return f"failed: {slot.error}"
    return slot.state


def model_info(slot: Slot) -> ModelInfo:
    """Encoder facts come from config.json, which is small; nothing heavy is read here."""
    dims = max_len = None
    if slot.spec.role != "lm":
        raw = _small_json(slot.path / "config.json")
        dims = raw.get("hidden_size") if isinstance(raw.get("hidden_size"), int) else None
        st = _small_json(slot.path / "sentence_bert_config.json").get("max_seq_length")
        pos = raw.get("max_position_embeddings")
        max_len = st if isinstance(st, int) else pos if isinstance(pos, int) else None
    family = "bert" if slot.spec.role != "lm" else None
    return ModelInfo(slot.spec.name, slot.capabilities, family=family, dimensions=dims, max_input_tokens=max_len)


def _small_json(path: Path) -> Mapping[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
