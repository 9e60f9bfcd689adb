"""MLXAdapter: embeddings, reranking and chat in-process on MLX (Metal, CUDA or CPU).

All models of one adapter live on one owner thread (adapters/mlx_runtime.py). Importing this module
imports no MLX: the server answers tools/list before MLX loads, and models load in the background
after start() (or on first use when options.preload is off). A call that arrives while its model is
loading waits for the load up to `deadlines.model_load_s` (then it fails over as unavailable), and within
the router's deadline. A chat carries its deadline to the owner thread, which refuses a prompt it cannot
read in time and stops a prefill that runs out of it within one chunk.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

import anyio
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
from adapters.manifest import MLXManifest
from adapters.mlx_models import (
    ROLE_CAPABILITIES,
    Loader,
    Slot,
    describe,
    ensure_loaded,
    load_model,
    model_dir,
    model_info,
)
from adapters.mlx_runtime import JobContext, OwnerThread, Steering
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
        steering: Steering,
    ) -> _Outcome: ...


def _shortest_floats(vectors: Any) -> list[list[float]]:
    """float32 rows as Python floats that print in float32's shortest form (exact at float32, ~40% less JSON)."""
    import numpy as np

    rows = np.ascontiguousarray(vectors, dtype=np.float32)
    return cast(list[list[float]], orjson.loads(orjson.dumps(rows, option=orjson.OPT_SERIALIZE_NUMPY)))


class MLXAdapter:
    def __init__(self, manifest: MLXManifest, context: AdapterContext, *, loader: Loader = load_model) -> None:
        self._manifest = manifest
        self._options = manifest.options
        self._context = context
        self._loader = loader
        self._slots: dict[str, Slot] = {}
        self._names: dict[str, str] = {}
        for spec in manifest.models:
            caps = frozenset(spec.capabilities) & ROLE_CAPABILITIES[spec.role]
            self._slots[spec.name] = Slot(spec, model_dir(spec, context.models_dir), caps)
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
        details = {s.spec.name: describe(s) for s in self._slots.values()}
        for s in self._slots.values():
            layout = getattr(s.model, "layout", None) if s.state == "ready" else None
            if isinstance(layout, str):
                details[f"{s.spec.name} layout"] = layout
        if self.blas is not None:
            details["blas"] = self.blas
        failed = [s for s in self._slots.values() if s.state == "failed"]
        ok = len(failed) < len(self._slots) and not self._runtime.closing
        error = "; ".join(f"{s.spec.name}: {s.error}" for s in failed) or None
        return ProbeResult(
            ok=ok, models=tuple(model_info(s) for s in self._slots.values()), error=error, details=details
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
        return await self._call(
            slot, lambda ctx, model, deadline: self._chat_job(ctx, model, req, deadline), req.progress, long=True
        )

    async def aclose(self) -> None:
        await self._runtime.aclose()

    # --- loop side -----------------------------------------------------------

    def _slot(self, name: str, capability: Capability) -> Slot:
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

    async def _call(self, slot: Slot, job: Callable[..., Any], progress: ProgressFn | None, long: bool = False) -> Any:
        self.start()
        try:
            if slot.state != "ready":
                if progress is not None:
                    await progress(0, None, f"loading model {slot.spec.name}")
                await self._wait_loaded(slot)
            # The owner thread checks the deadline itself: it may be busy when the caller's scope expires.
            left = anyio.current_effective_deadline() - anyio.current_time()
            deadline = time.monotonic() + left if math.isfinite(left) else None

            def run(ctx: JobContext) -> Any:
                model = self._ensure_loaded(slot, ctx)
                return job(ctx, model, deadline) if long else job(ctx, model)

            runnable = slot.runnable_inside_another_job
            return await self._runtime.run(run, interleavable=not long, progress=progress, runnable=runnable)
        except AdapterError:
            raise
        except Exception as exc:
            raise AdapterUnavailableError(f"MLX model {slot.spec.name!r} failed: {safe_detail(str(exc))}") from exc

    async def _wait_loaded(self, slot: Slot) -> None:
        """Wait for the model's load at most `model_load_s`; past that the call fails over (retryable)."""
        limit = self._context.limits.model_load_s
        with anyio.move_on_after(limit) as scope:
            await self._runtime.run(
                lambda ctx: self._ensure_loaded(slot, ctx),
                interleavable=slot.spec.role != "lm",
                runnable=slot.runnable_inside_another_job,
            )
        if scope.cancelled_caught:
            raise AdapterUnavailableError(
                f"MLX model {slot.spec.name!r} is still loading after {limit:g} s (deadlines.model_load_s); "
                "try again shortly"
            )

    # --- owner thread --------------------------------------------------------

    def _ensure_loaded(self, slot: Slot, ctx: JobContext) -> object:
        # The load keeps going when the caller that started it leaves: other callers wait on it too.
        return ensure_loaded(slot, self._loader, self._options, ctx.serve_others)

    def _drop_models(self) -> None:
        for slot in self._slots.values():
            close = getattr(slot.model, "close", None)
            if callable(close):
                close()  # an encoder's half-batch worker thread (adapters/numpy_halves.py)
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

    def _chat_job(self, ctx: JobContext, model: _Chat, req: ChatRequest, deadline: float | None) -> ChatResult:
        max_tokens = req.max_tokens or self._options.max_tokens
        started = time.perf_counter()

        def on_token(_text: str, n_tokens: int) -> None:
            ctx.report(n_tokens, max_tokens, "first token" if n_tokens == 1 else f"{n_tokens} tokens")

        out = model.generate(
            [{"role": m.role, "content": m.content} for m in req.messages],
            max_tokens=max_tokens,
            temperature=self._options.temperature if req.temperature is None else req.temperature,
            stop=list(req.stop),
            steering=Steering(ctx.should_stop, on_token, deadline),
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


def _preload(adapter: MLXAdapter, slot: Slot, ctx: JobContext) -> None:
    with contextlib.suppress(ModelLoadError):  # recorded on the slot; probe() reports it and calls raise it
        adapter._ensure_loaded(slot, ctx)


_LIVE_STATE: dict[str, ModelState] = {"idle": "unloaded", "loading": "loading", "ready": "ready", "failed": "failed"}
