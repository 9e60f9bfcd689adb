"""MLXAdapter: embeddings, reranking and chat in-process on MLX (Metal, CUDA or CPU).

All models of one adapter live on one owner thread (adapters/mlx_runtime.py). Importing this module
imports no MLX: the server answers tools/list before MLX loads, and models load in the background
after start() (or on first use when options.preload is off). A call that arrives while its model is
loading queues behind the load on the owner thread, bounded by the router's deadline.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, cast

import orjson

from adapters._blas import load_openblas
from adapters.base import AdapterContext, AdapterInfo, ModelInfo, ModelState, ProbeResult
from adapters.errors import (
    AdapterError,
    AdapterUnavailableError,
    CapabilityError,
    InvalidRequestError,
    ModelLoadError,
    ModelNotFoundError,
    safe_detail,
)
from adapters.manifest import MLXManifest, MLXModelSpec, MLXOptions
from adapters.mlx_runtime import JobContext, OwnerThread
from adapters.types import (
    Capability,
    ChatRequest,
    ChatResult,
    ChatTimings,
    EmbedRequest,
    EmbedResult,
    ProgressFn,
    RerankMethod,
    RerankRequest,
    RerankResult,
    Usage,
    rank,
)

Role = Literal["encoder", "cross-encoder", "lm"]
ROLE_CAPABILITIES: dict[str, frozenset[Capability]] = {
    "encoder": frozenset({"embed", "rerank"}),
    "cross-encoder": frozenset({"rerank"}),
    "lm": frozenset({"chat"}),
}
Loader = Callable[[str, Path, MLXOptions], object]


class _Encoded(Protocol):
    vectors: Any  # numpy (n, d) float32, L2-normalised
    tokens: int
    truncated: int


class _Encoder(Protocol):
    dimensions: int
    max_length: int
    forward_passes: int

    def encode(
        self, texts: Sequence[str], *, token_budget: int, batch_limit: int, on_chunk: Callable[[int, int], None] | None
    ) -> _Encoded: ...


class _Scorer(Protocol):
    max_length: int
    forward_passes: int

    def score(
        self,
        query: str,
        documents: Sequence[str],
        *,
        token_budget: int,
        batch_limit: int,
        on_chunk: Callable[[int, int], None] | None,
    ) -> Any: ...


class _Outcome(Protocol):
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token_s: float | None
    tokens_per_second: float | None


class _Chat(Protocol):
    def generate(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int,
        temperature: float,
        stop: list[str],
        should_stop: Callable[[], bool],
        on_token: Callable[[str, int], None] | None,
    ) -> _Outcome: ...


def _shortest_floats(vectors: Any) -> list[list[float]]:
    """float32 rows as Python floats that print in float32's shortest form (exact at float32, ~40% less JSON)."""
    import numpy as np

    rows = np.ascontiguousarray(vectors, dtype=np.float32)
    return cast(list[list[float]], orjson.loads(orjson.dumps(rows, option=orjson.OPT_SERIALIZE_NUMPY)))


def load_model(role: str, path: Path, options: MLXOptions) -> object:
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
    return ChatModel.load(path)


def model_dir(spec: MLXModelSpec, models_dir: Path) -> Path:
    """Where a model's files are: `path` (relative to models_dir) or the installed pack."""
    if spec.path:
        return models_dir / Path(spec.path).expanduser()
    assert spec.pack is not None
    return models_dir / spec.pack


@dataclass(eq=False)
class _Slot:
    spec: MLXModelSpec
    path: Path
    capabilities: frozenset[Capability]
    state: Literal["idle", "loading", "ready", "failed"] = "idle"
    error: str | None = None
    missing: bool = False
    model: object | None = None  # touched on the owner thread only


class MLXAdapter:
    def __init__(self, manifest: MLXManifest, context: AdapterContext, *, loader: Loader = load_model) -> None:
        self._manifest = manifest
        self._options = manifest.options
        self._context = context
        self._loader = loader
        self._slots: dict[str, _Slot] = {}
        self._names: dict[str, str] = {}
        for spec in manifest.models:
            caps = frozenset(spec.capabilities) & ROLE_CAPABILITIES[spec.role]
            self._slots[spec.name] = _Slot(spec, model_dir(spec, context.models_dir), caps)
            for name in (spec.name, *spec.aliases):
                self._names.setdefault(name, spec.name)
        self.blas: str | None = None  # which BLAS MLX uses, once the owner thread has decided
        self._runtime = OwnerThread(f"mlx-{manifest.name}", on_exit=self._drop_models, before_mlx=self._choose_blas)
        self.info = AdapterInfo(
            name=manifest.name,
            kind="mlx",
            privacy="local",
            capabilities=frozenset().union(*(s.capabilities for s in self._slots.values())),
            models=tuple(ModelInfo(s.spec.name, s.capabilities) for s in self._slots.values()),
        )

    def _choose_blas(self) -> None:
        """On the owner thread, before it imports MLX."""
        self.blas = load_openblas(opt_out=self._options.blas == "reference")

    @property
    def forward_passes(self) -> int:
        """Encoder forward passes run so far (one per chunk of a batch)."""
        return sum(int(getattr(s.model, "forward_passes", 0)) for s in self._slots.values())

    def start(self) -> None:
        """Start the owner thread and, with options.preload, queue every model's load (encoders first)."""
        if self._runtime.started or self._runtime.closing:
            return
        self._runtime.start()
        if self._options.preload:
            for slot in sorted(self._slots.values(), key=lambda s: s.spec.role == "lm"):
                self._runtime.submit(functools.partial(_preload, self, slot))

    async def probe(self) -> ProbeResult:
        self.start()
        details = {s.spec.name: _describe(s) for s in self._slots.values()}
        if self.blas is not None:
            details["blas"] = self.blas
        failed = [s for s in self._slots.values() if s.state == "failed"]
        ok = len(failed) < len(self._slots) and not self._runtime.closing
        error = "; ".join(f"{s.spec.name}: {s.error}" for s in failed) or None
        return ProbeResult(
            ok=ok, models=tuple(_model_info(s) for s in self._slots.values()), error=error, details=details
        )

    def model_states(self) -> dict[str, tuple[ModelState, str | None]]:
        """Each model's load state now (set on the owner thread; a read here sees the latest)."""
        return {s.spec.name: (_LIVE_STATE[s.state], s.error) for s in self._slots.values()}

    async def embed(self, req: EmbedRequest) -> EmbedResult:
        slot = self._slot(req.model, "embed")
        if not req.texts:
            return EmbedResult(model=slot.spec.name, vectors=[], usage=Usage())
        if req.dimensions is not None and req.dimensions < 1:
            raise InvalidRequestError("dimensions must be a positive integer")
        return await self._call(slot, lambda ctx, model: self._embed_job(ctx, model, req), req.progress)

    async def rerank(self, req: RerankRequest) -> RerankResult:
        slot = self._slot(req.model, "rerank")
        if not req.documents:
            method: RerankMethod = "cross-encoder" if slot.spec.role == "cross-encoder" else "bi-encoder-cosine"
            return RerankResult(model=slot.spec.name, results=(), method=method, usage=Usage())
        job = self._cross_job if slot.spec.role == "cross-encoder" else self._cosine_job
        return await self._call(slot, lambda ctx, model: job(ctx, model, req), None)

    async def chat(self, req: ChatRequest) -> ChatResult:
        slot = self._slot(req.model, "chat")
        if not req.messages:
            raise InvalidRequestError("messages must not be empty")
        return await self._call(slot, lambda ctx, model: self._chat_job(ctx, model, req), req.progress, long=True)

    async def aclose(self) -> None:
        await self._runtime.aclose()

    # --- loop side -----------------------------------------------------------

    def _slot(self, name: str, capability: Capability) -> _Slot:
        try:
            slot = self._slots[self._names[name]]
        except KeyError:
            served = ", ".join(sorted(self._slots))
            raise ModelNotFoundError(f"adapter {self.info.name!r} has no model {name!r}; it serves: {served}") from None
        if capability not in slot.capabilities:
            can = ", ".join(sorted(slot.capabilities)) or "nothing"
            raise CapabilityError(
                f"model {slot.spec.name!r} on adapter {self.info.name!r} serves {can}, not {capability}"
            )
        return slot

    async def _call(
        self, slot: _Slot, job: Callable[[JobContext, Any], Any], progress: ProgressFn | None, long: bool = False
    ) -> Any:
        self.start()
        if progress is not None and slot.state != "ready":
            await progress(0, None, f"loading model {slot.spec.name}")

        def run(ctx: JobContext) -> Any:
            return job(ctx, self._ensure_loaded(slot))

        try:
            return await self._runtime.run(run, interleavable=not long, progress=progress)
        except AdapterError:
            raise
        except Exception as exc:
            raise AdapterUnavailableError(f"MLX model {slot.spec.name!r} failed: {safe_detail(str(exc))}") from exc

    # --- owner thread --------------------------------------------------------

    def _ensure_loaded(self, slot: _Slot) -> object:
        if slot.state == "ready":
            return slot.model
        # A load that failed on missing files is retried once they appear (a pack pulled while serving).
        if slot.state == "failed" and not (slot.missing and _missing_files(slot) is None):
            raise ModelLoadError(f"MLX model {slot.spec.name!r} failed to load: {slot.error}")
        slot.state = "loading"
        try:
            missing = _missing_files(slot)
            slot.missing = missing is not None
            if missing is not None:
                raise ModelLoadError(missing)
            slot.model = self._loader(slot.spec.role, slot.path, self._options)
        except Exception as exc:
            slot.error = safe_detail(str(exc)) or type(exc).__name__
            slot.state = "failed"
            raise ModelLoadError(f"MLX model {slot.spec.name!r} failed to load: {slot.error}") from exc
        slot.state = "ready"
        return slot.model

    def _drop_models(self) -> None:
        for slot in self._slots.values():
            slot.model = None
            if slot.state in ("ready", "loading"):
                slot.state = "idle"

    def _embed_job(self, ctx: JobContext, model: _Encoder, req: EmbedRequest) -> EmbedResult:
        if req.dimensions is not None and req.dimensions > model.dimensions:
            raise InvalidRequestError(
                f"model {req.model!r} makes {model.dimensions}-dimensional vectors; dimensions must be <= that"
            )
        out = model.encode(req.texts, **self._batching(ctx, "embedded"))
        vectors = out.vectors
        if req.dimensions is not None and req.dimensions < model.dimensions:
            # Matryoshka-style: keep the leading components and renormalise to unit length.
            vectors = vectors[:, : req.dimensions]
            norms = (vectors * vectors).sum(axis=1, keepdims=True) ** 0.5
            vectors = vectors / norms.clip(1e-12, None)
        return EmbedResult(
            model=self._names[req.model],
            vectors=_shortest_floats(vectors),
            usage=Usage(input_tokens=out.tokens),
            truncated=out.truncated,
            max_input_tokens=model.max_length,
        )

    def _cosine_job(self, ctx: JobContext, model: _Encoder, req: RerankRequest) -> RerankResult:
        out = model.encode([req.query, *req.documents], **self._batching(ctx, None))
        scores = (out.vectors[1:] @ out.vectors[0]).tolist()
        return RerankResult(
            model=self._names[req.model],
            results=rank(scores, req.top_n),
            method="bi-encoder-cosine",
            usage=Usage(input_tokens=out.tokens),
        )

    def _cross_job(self, ctx: JobContext, model: _Scorer, req: RerankRequest) -> RerankResult:
        out = model.score(req.query, req.documents, **self._batching(ctx, None))
        return RerankResult(
            model=self._names[req.model],
            results=rank(out.scores.tolist(), req.top_n),
            method="cross-encoder",
            usage=Usage(input_tokens=out.tokens),
        )

    def _batching(self, ctx: JobContext, verb: str | None) -> dict[str, Any]:
        def on_chunk(done: int, total: int) -> None:
            ctx.report(done, total, f"{verb} {done}/{total} texts" if verb else None)

        return {
            "token_budget": self._options.max_batch_tokens,
            "batch_limit": self._context.limits.batch_limit,
            "on_chunk": on_chunk,
        }

    def _chat_job(self, ctx: JobContext, model: _Chat, req: ChatRequest) -> ChatResult:
        max_tokens = req.max_tokens or self._options.max_tokens
        started = time.perf_counter()

        def on_token(_text: str, n_tokens: int) -> None:
            ctx.report(n_tokens, max_tokens, "first token" if n_tokens == 1 else f"{n_tokens} tokens")

        out = model.generate(
            [{"role": m.role, "content": m.content} for m in req.messages],
            max_tokens=max_tokens,
            temperature=self._options.temperature if req.temperature is None else req.temperature,
            stop=list(req.stop),
            should_stop=ctx.should_stop,
            on_token=on_token,
        )
        ttft, tps = out.time_to_first_token_s, out.tokens_per_second
        return ChatResult(
            model=self._names[req.model],
            content=out.text,
            finish_reason=out.finish_reason if out.finish_reason in ("stop", "length", "cancelled") else "stop",  # type: ignore[arg-type]
            usage=Usage(input_tokens=out.prompt_tokens, output_tokens=out.completion_tokens),
            timings=ChatTimings(
                total_ms=(time.perf_counter() - started) * 1000.0,
                time_to_first_token_ms=None if ttft is None else ttft * 1000.0,
                tokens_per_second=tps,
            ),
        )


def _preload(adapter: MLXAdapter, slot: _Slot, ctx: JobContext) -> None:
    with contextlib.suppress(ModelLoadError):  # recorded on the slot; probe() reports it and calls raise it
        adapter._ensure_loaded(slot)


def _missing_files(slot: _Slot) -> str | None:
    if slot.path.is_dir() and (slot.path / "config.json").is_file():
        return None
    if slot.spec.path:
        return f"model directory {slot.path} does not exist or has no config.json"
    return (
        f"model pack {slot.spec.pack!r} is not installed (looked in {slot.path}); "
        f"run `model-gateway models pull {slot.spec.pack}`"
    )


_LIVE_STATE: dict[str, ModelState] = {"idle": "unloaded", "loading": "loading", "ready": "ready", "failed": "failed"}


def _describe(slot: _Slot) -> str:
    if slot.state == "failed":
        return f"failed: {slot.error}"
    return slot.state


def _model_info(slot: _Slot) -> ModelInfo:
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
