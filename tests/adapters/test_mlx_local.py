from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from adapters._blas import find_openblas
from adapters.base import AdapterContext, AdapterLimits
from adapters.errors import (
    AdapterUnavailableError,
    CapabilityError,
    InvalidRequestError,
    ModelLoadError,
    ModelNotFoundError,
)
from adapters.manifest import MLXManifest
from adapters.mlx_bert import CrossEncoder
from adapters.mlx_local import MLXAdapter, load_model
from adapters.mlx_runtime import Steering
from adapters.types import ChatMessage, ChatRequest, EmbedRequest, RerankRequest
from tests.support.tiny_bert import mark_installed, write_tiny_bert

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    mark_installed(write_tiny_bert(root / "tiny-encoder"))
    write_tiny_bert(root / "tiny-cross", seed=1, cross_encoder=True)
    return root


def _manifest(models: list[dict[str, Any]] | None = None, **options: Any) -> MLXManifest:
    models = models or [
        {
            "name": "enc",
            "role": "encoder",
            "pack": "tiny-encoder",
            "capabilities": ["embed", "rerank"],
            "aliases": ["e"],
        },
        {"name": "cross", "role": "cross-encoder", "path": "tiny-cross", "capabilities": ["rerank"]},
        {"name": "lm", "role": "lm", "path": "tiny-encoder", "capabilities": ["chat"]},
    ]
    return MLXManifest(kind="mlx", name="mlx", models=models, options=options)


@dataclass(frozen=True)
class Outcome:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token_s: float | None
    tokens_per_second: float | None


class ScriptedChat:
    """Stands in for adapters.mlx_chat.ChatModel: emits tokens, honours should_stop() between them."""

    def __init__(self, tokens: tuple[str, ...] = ("Hello", ",", " world"), *, endless: bool = False) -> None:
        self.tokens, self.endless = tokens, endless
        self.started, self.stopped = threading.Event(), threading.Event()
        self.thread_name: str | None = None

    def generate(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int,
        temperature: float,
        stop: list[str],
        steering: Steering,
    ) -> Outcome:
        should_stop, on_token = steering.should_stop, steering.on_token
        self.thread_name = threading.current_thread().name
        self.started.set()
        text, n = "", 0
        while self.endless or n < min(len(self.tokens), max_tokens):
            if should_stop():
                self.stopped.set()
                return Outcome(text, "cancelled", 3, n, 0.001, None)
            if self.endless:
                time.sleep(0.002)  # one fake token's worth of work
                continue
            text += self.tokens[n]
            n += 1
            if on_token is not None:
                on_token(text, n)
        return Outcome(text, "length" if n == max_tokens else "stop", len(messages) * 3, n, 0.001, 100.0)


def _loader(chat: ScriptedChat | None = None, gate: threading.Event | None = None) -> Callable[..., object]:
    def load(role: str, path: Path, options: Any, *_: Any) -> object:
        if gate is not None:
            assert gate.wait(10)
        if role == "lm":
            return chat or ScriptedChat()
        return load_model(role, path, options)

    return load


def _adapter(models_dir: Path, manifest: MLXManifest | None = None, **kwargs: Any) -> MLXAdapter:
    return MLXAdapter(manifest or _manifest(), AdapterContext(models_dir=models_dir), loader=_loader(**kwargs))


async def _embed(adapter: MLXAdapter, texts: list[str], **kwargs: Any) -> Any:
    with anyio.fail_after(30):
        return await adapter.embed(EmbedRequest(model="enc", texts=tuple(texts), **kwargs))


def test_importing_and_constructing_the_adapter_imports_no_mlx(models_dir: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from adapters.mlx_local import MLXAdapter; "
        "from adapters.manifest import MLXManifest; from adapters.base import AdapterContext; "
        "m = MLXManifest(kind='mlx', name='mlx', models=[{'name': 'e', 'role': 'encoder', 'pack': 'p', "
        "'capabilities': ['embed']}]); MLXAdapter(m, AdapterContext(models_dir=Path('.'))); "
        "assert not [n for n in sys.modules if n.startswith(('mlx', 'tokenizers'))], 'mlx imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.anyio
async def test_embed_returns_unit_vectors_in_order_with_token_counts(models_dir: Path) -> None:
    adapter = _adapter(models_dir)
    try:
        texts = ["the cat sits on the mat", "rain", "paris is the capital of france"]
        result = await _embed(adapter, texts)
        assert result.model == "enc" and result.dimensions == 32 and result.max_input_tokens == 24
        assert np.allclose(np.linalg.norm(np.array(result.vectors), axis=1), 1.0, atol=1e-5)
        singles = [(await _embed(adapter, [t])).vectors[0] for t in texts]
        assert np.allclose(np.array(singles), np.array(result.vectors), atol=1e-5)
        assert result.usage.input_tokens == 8 + 3 + 8  # [CLS] words [SEP]
    finally:
        await adapter.aclose()


@pytest.mark.anyio
async def test_each_embed_call_is_one_forward_pass_even_when_concurrent(models_dir: Path) -> None:
    adapter = _adapter(models_dir)
    try:
        await _embed(adapter, ["warm up"])
        before = adapter.forward_passes
        results: list[Any] = [None] * 8

        async def one(i: int) -> None:
            results[i] = await _embed(adapter, [f"text {i}", "the cat", "rain today", "hot sun"])

        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(one, i)
        assert adapter.forward_passes - before == 8
        assert all(len(r.vectors) == 4 for r in results)
        await _embed(adapter, [f"text {i}" for i in range(32)])
        assert adapter.forward_passes - before == 9
    finally:
        await adapter.aclose()


@pytest.mark.anyio
async def test_a_batch_over_the_token_budget_is_split_and_reports_progress(models_dir: Path) -> None:
    adapter = _adapter(models_dir, _manifest(max_batch_tokens=512))
    reports: list[tuple[float, float | None, str | None]] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        reports.append((done, total, message))

    try:
        texts = [" ".join(["cat"] * 30)] * 60  # 24 tokens each after truncation: 21 per pass
        result = await _embed(adapter, texts, progress=progress)
        assert len(result.vectors) == 60 and result.truncated == 60
        assert adapter.forward_passes == 3
        assert reports and reports[-1] == (60, 60, "embedded 60/60 texts")
    finally:
        await adapter.aclose()


@pytest.mark.anyio
async def test_dimensions_truncate_and_renormalise_or_name_the_model_size(models_dir: Path) -> None:
    adapter = _adapter(models_dir)
    try:
        full = np.array((await _embed(adapter, ["the cat sits"])).vectors[0])
        cut = np.array((await _embed(adapter, ["the cat sits"], dimensions=8)).vectors[0])
        assert cut.shape == (8,) and np.allclose(cut, full[:8] / np.linalg.norm(full[:8]), atol=1e-6)
        with pytest.raises(InvalidRequestError, match="32-dimensional"):
            await _embed(adapter, ["the cat"], dimensions=64)
    finally:
        await adapter.aclose()


@pytest.mark.anyio
async def test_rerank_uses_cosine_for_an_encoder_and_the_head_for_a_cross_encoder(models_dir: Path) -> None:
    adapter = _adapter(models_dir)
    docs = ("stock market revenue grew", "the cat sits on the mat", "hot sun today")
    try:
        with anyio.fail_after(30):
            bi = await adapter.rerank(
                RerankRequest(model="e", query="the cat sits on the mat", documents=docs, top_n=2)
            )
            cross = await adapter.rerank(RerankRequest(model="cross", query="where is the cat", documents=docs))
        assert bi.method == "bi-encoder-cosine" and len(bi.results) == 2
        assert bi.results[0].index == 1 and bi.results[0].relevance_score == pytest.approx(1.0, abs=1e-5)
        expected = CrossEncoder.load(models_dir / "tiny-cross").score("where is the cat", docs).scores
        assert cross.method == "cross-encoder" and cross.usage.input_tokens > 0
        assert [r.index for r in cross.results] == list(np.argsort(-expected, kind="stable"))
        assert [r.relevance_score for r in cross.results] == pytest.approx(sorted(expected, reverse=True), abs=1e-6)
    finally:
        await adapter.aclose()


@pytest.mark.anyio
async def test_unknown_models_and_undeclared_capabilities_are_refused(models_dir: Path) -> None:
    adapter = _adapter(models_dir)
    try:
        with pytest.raises(ModelNotFoundError, match="serves: cross, enc, lm"):
            await adapter.embed(EmbedRequest(model="nope", texts=("x",)))
        with pytest.raises(CapabilityError, match="serves rerank, not embed"):
            await adapter.embed(EmbedRequest(model="cross", texts=("x",)))
        assert adapter.info.capabilities == frozenset({"embed", "rerank", "chat"})
    finally:
        await adapter.aclose()


@pytest.mark.anyio
async def test_probe_reports_loading_then_ready_and_early_calls_wait(models_dir: Path) -> None:
    gate = threading.Event()
    adapter = _adapter(models_dir, gate=gate)
    try:
        probe = await adapter.probe()
        states = {k: v for k, v in probe.details.items() if k != "blas"}
        assert probe.ok and set(states.values()) <= {"loading", "idle"}
        enc = next(m for m in probe.models if m.name == "enc")
        assert enc.dimensions == 32 and enc.max_input_tokens == 24
        result: list[Any] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: _collect(result, _embed(adapter, ["rain"])))
            await anyio.sleep(0.05)
            assert not result  # queued behind the load
            gate.set()
        assert len(result[0].vectors) == 1
        with anyio.fail_after(30):
            await adapter.rerank(RerankRequest(model="cross", query="q", documents=("d",)))
            await adapter.chat(ChatRequest(model="lm", messages=(ChatMessage("user", "hi"),)))
        details = (await adapter.probe()).details
        assert {k: v for k, v in details.items() if k != "blas" and not k.endswith(" layout")} == {
            "enc": "ready",
            "cross": "ready",
            "lm": "ready",
        }
        assert details["enc layout"] == details["cross layout"]
        assert details["enc layout"].startswith("float32, numpy forward pass, products in ")
    finally:
        gate.set()
        await adapter.aclose()


async def _collect(into: list[Any], awaitable: Any) -> None:
    into.append(await awaitable)


@pytest.mark.anyio
async def test_a_missing_pack_fails_with_the_pull_command_and_recovers_once_pulled(tmp_path: Path) -> None:
    manifest = _manifest([{"name": "enc", "role": "encoder", "pack": "later", "capabilities": ["embed"]}])
    adapter = _adapter(tmp_path, manifest)
    try:
        with pytest.raises(ModelLoadError, match=r"'later' is not installed .*model-gateway models pull later"):
            await _embed(adapter, ["rain"])
        probe = await adapter.probe()
        assert not probe.ok and "model-gateway models pull later" in (probe.error or "")
        assert probe.details["enc"].startswith("failed: ")
        # Packs appear whole (pull renames a finished directory into place); so does this one.
        mark_installed(write_tiny_bert(tmp_path / ".staging")).rename(tmp_path / "later")
        assert len((await _embed(adapter, ["rain"])).vectors) == 1
    finally:
        await adapter.aclose()


@pytest.mark.anyio
async def test_chat_runs_generation_on_the_owner_thread(models_dir: Path) -> None:
    chat = ScriptedChat()
    adapter = _adapter(models_dir, chat=chat)
    reports: list[float] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        reports.append(done)

    try:
        req = ChatRequest(model="lm", messages=(ChatMessage("user", "hi"),), max_tokens=2, progress=progress)
        with anyio.fail_after(30):
            result = await adapter.chat(req)
        assert (result.content, result.finish_reason) == ("Hello,", "length")
        assert (result.usage.input_tokens, result.usage.output_tokens) == (3, 2)
        assert result.timings.time_to_first_token_ms == pytest.approx(1.0) and result.timings.total_ms > 0
        assert chat.thread_name == "mlx-mlx" and reports and reports[-1] == 2
    finally:
        await adapter.aclose()


@pytest.mark.anyio
async def test_cancelling_a_chat_stops_generation_and_embeds_run_meanwhile(models_dir: Path) -> None:
    chat = ScriptedChat(endless=True)
    adapter = _adapter(models_dir, chat=chat)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(adapter.chat, ChatRequest(model="lm", messages=(ChatMessage("user", "go"),)))
            with anyio.fail_after(30):
                await anyio.to_thread.run_sync(chat.started.wait)
                # The generation holds the owner thread; the embed is served between its tokens.
                assert len((await _embed(adapter, ["rain"])).vectors) == 1
            assert not chat.stopped.is_set()
            tg.cancel_scope.cancel()
        with anyio.fail_after(30):
            await anyio.to_thread.run_sync(chat.stopped.wait)
            assert len((await _embed(adapter, ["sun"])).vectors) == 1
    finally:
        await adapter.aclose()


@pytest.mark.anyio
async def test_aclose_is_idempotent_and_later_calls_are_refused(models_dir: Path) -> None:
    never_started = _adapter(models_dir)
    await never_started.aclose()
    adapter = _adapter(models_dir)
    await _embed(adapter, ["rain"])
    with anyio.fail_after(30):
        await adapter.aclose()
        await adapter.aclose()
    with pytest.raises(AdapterUnavailableError, match="closed"):
        await _embed(adapter, ["rain"])
    assert not (await adapter.probe()).ok


HALVES = """
import json, sys, threading
from pathlib import Path
import anyio
from adapters.base import AdapterContext
from adapters.manifest import MLXManifest
from adapters.mlx_local import MLXAdapter
from adapters.types import EmbedRequest

async def main() -> None:
    enc = {"name": "enc", "role": "encoder", "pack": "tiny-encoder", "capabilities": ["embed"]}
    manifest = MLXManifest(kind="mlx", name="mlx", models=[enc], options={})
    adapter = MLXAdapter(manifest, AdapterContext(models_dir=Path(sys.argv[1])))
    # 20 texts cut to the tiny model's 24 tokens: 480 tokens, a batch that goes through in halves.
    texts = tuple(f"text {i} " + "cat " * 30 for i in range(20))
    with anyio.fail_after(60):
        out = await adapter.embed(EmbedRequest(model="enc", texts=texts))
        started = [t for t in threading.enumerate() if t.name.startswith("encoder-half")]
        layout = dict((await adapter.probe()).details)["enc layout"]
        kept = adapter._slots["enc"].model  # still referenced: only closing it can stop its thread
        await adapter.aclose()
    alive = sum(t.is_alive() for t in started)
    assert kept is not None
    report = {"blas": adapter.blas, "rows": len(out.vectors), "started": len(started), "alive": alive}
    print(json.dumps({**report, "layout": layout}))

anyio.run(main)
"""


def test_closing_the_adapter_stops_the_thread_that_ran_half_of_a_big_batch(models_dir: Path) -> None:
    if find_openblas() is None:
        pytest.skip("batches go through in halves only with OpenBLAS in front of MLX")
    # A process of its own: OpenBLAS goes in front of MLX only where MLX is not imported yet.
    run = subprocess.run(
        [sys.executable, "-c", HALVES, str(models_dir)], capture_output=True, text=True, timeout=120, check=True
    )
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["blas"].startswith("openblas") and report["rows"] == 20
    assert report["started"] == 1 and report["alive"] == 0
    assert "batches of 256+ tokens in halves on two threads" in report["layout"]


def _installed_pack(name: str) -> Path:
    import os

    from server.paths import default_models_dir

    root = default_models_dir(os.environ)
    if not (root / name / "config.json").is_file():
        pytest.skip(f"model pack {name!r} is not installed in {root} (model-gateway models pull {name})")
    return root


@pytest.mark.packs
@pytest.mark.anyio
async def test_the_shipped_mlx_manifest_serves_the_default_packs() -> None:
    root = _installed_pack("all-minilm-l6-v2")
    _installed_pack("smollm2-135m-instruct")
    manifest = MLXManifest.model_validate_json((REPO / "manifests" / "adapters" / "mlx.json").read_text())
    adapter = MLXAdapter(manifest, AdapterContext(models_dir=root, limits=AdapterLimits()))
    try:
        with anyio.fail_after(120):
            emb = await adapter.embed(EmbedRequest(model="all-MiniLM-L6-v2", texts=("The cat sits on the mat.",)))
            reply = await adapter.chat(
                ChatRequest(
                    model="smollm2-135m-instruct",
                    messages=(ChatMessage("user", "What is the capital of France?"),),
                    max_tokens=8,
                    temperature=0.0,
                )
            )
        assert emb.model == "all-minilm-l6-v2" and emb.dimensions == 384 and emb.max_input_tokens == 256
        assert reply.finish_reason in ("stop", "length") and 0 < reply.usage.output_tokens <= 8 and reply.content
        details = dict((await adapter.probe()).details)
        details_blas = details.pop("blas")
        assert details_blas.startswith(("openblas", "reference", "platform"))
        layouts = {k: details.pop(k) for k in list(details) if k.endswith(" layout")}
        assert details == {"all-minilm-l6-v2": "ready", "smollm2-135m-instruct": "ready"}
        if "cpu" in layouts["smollm2-135m-instruct layout"]:
            # With OpenBLAS in front of MLX, the encoder's and the decoder's products use it; otherwise numpy's.
            blas = "OpenBLAS" if details_blas.startswith("openblas") else "numpy's"
            assert layouts["all-minilm-l6-v2 layout"].startswith(f"float32, numpy forward pass, products in {blas}")
            products = "OpenBLAS (libopenblas.so.0)" if details_blas.startswith("openblas") else "numpy"
            assert layouts["smollm2-135m-instruct layout"] == (
                f"float32 converted from 4/8-bit quantized at load, numpy decoder, products by {products} (cpu)"
            )
    finally:
        await adapter.aclose()


@pytest.mark.anyio
async def test_the_adapter_meets_the_shared_adapter_contract(tmp_path: Path) -> None:
    from tests.support.contract import check_contract
    from tests.support.tiny_lm import build_tiny_lm

    write_tiny_bert(tmp_path / "enc")
    build_tiny_lm(tmp_path / "lm")
    manifest = _manifest(
        [
            {"name": "enc", "role": "encoder", "path": "enc", "capabilities": ["embed", "rerank"]},
            {"name": "lm", "role": "lm", "path": "lm", "capabilities": ["chat"]},
        ]
    )
    adapter = MLXAdapter(manifest, AdapterContext(models_dir=tmp_path))
    with anyio.fail_after(120):
        await check_contract(adapter, {"embed": "enc", "rerank": "enc", "chat": "lm"})


@pytest.mark.anyio
async def test_chat_progress_reports_model_loading_first_token_and_tokens_so_far(tmp_path: Path) -> None:
    from tests.support.tiny_lm import build_tiny_lm

    build_tiny_lm(tmp_path / "lm")
    manifest = _manifest([{"name": "lm", "role": "lm", "path": "lm", "capabilities": ["chat"]}], preload=False)
    adapter = MLXAdapter(manifest, AdapterContext(models_dir=tmp_path))
    seen: list[tuple[float, float | None, str | None]] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        seen.append((done, total, message))

    req = ChatRequest("lm", (ChatMessage("user", "hi"),), max_tokens=4, temperature=0.0, progress=progress)
    try:
        with anyio.fail_after(120):
            result = await adapter.chat(req)
    finally:
        await adapter.aclose()
    messages = [m for _, _, m in seen]
    assert messages[0] == "loading model lm"
    assert "first token" in messages
    assert seen[-1][0] == result.usage.output_tokens and seen[-1][1] == 4


# --- fair share of the owner thread: a long prompt against embeddings ----------------


class GatedForward:
    """Wraps a chat model: forward call n blocks until gates[n] is set (after `reached[n]` is set).

    A forward call is a call of the model or of its `read` (the numpy decoder reads prompt chunks that way)."""

    def __init__(self, inner: Any, gates: dict[int, threading.Event]) -> None:
        self.inner, self.gates, self.calls = inner, gates, 0
        self.reached = {n: threading.Event() for n in gates}

    def _gate(self) -> None:
        self.calls += 1
        if self.calls in self.gates:
            self.reached[self.calls].set()
            assert self.gates[self.calls].wait(30)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._gate()
        return self.inner(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name != "read":
            return attr

        def gated_read(*args: Any, **kwargs: Any) -> Any:
            self._gate()
            return attr(*args, **kwargs)

        return gated_read


def _recording_chat() -> type:
    from adapters.mlx_chat import ChatModel

    class RecordingChat(ChatModel):
        """The real chat model reading prompts 16 tokens at a time, keeping every outcome."""

        outcomes: list[Any]
        returned: threading.Event

        def generate(self, *args: Any, **kwargs: Any) -> Any:
            try:
                self.outcomes.append(super().generate(*args, **kwargs))
                return self.outcomes[-1]
            finally:
                self.returned.set()

    return RecordingChat


def _gated_chat_adapter(tmp_path: Path, gates: dict[int, threading.Event]) -> tuple[MLXAdapter, GatedForward]:
    from tests.support.tiny_lm import build_tiny_lm

    build_tiny_lm(tmp_path / "lm")
    mark_installed(write_tiny_bert(tmp_path / "enc"))
    forward = GatedForward(None, gates)  # wraps the chat model once it is loaded

    def loader(role: str, path: Path, options: Any, *_: Any) -> object:
        if role != "lm":
            return load_model(role, path, options)
        chat = _recording_chat().load(path)
        chat.chunk_s, chat.prefill_step = 0.0, 16  # many small chunks
        chat.outcomes, chat.returned = [], threading.Event()
        forward.inner, chat._model = chat._model, forward
        return chat

    manifest = _manifest(
        [
            {"name": "enc", "role": "encoder", "pack": "enc", "capabilities": ["embed"]},
            {"name": "lm", "role": "lm", "path": "lm", "capabilities": ["chat"]},
        ]
    )
    return MLXAdapter(manifest, AdapterContext(models_dir=tmp_path), loader=loader), forward


LONG_CHAT = ChatRequest(
    "lm", (ChatMessage("user", " ".join(f"item {i} is the quick brown fox" for i in range(60))),), 8, 0.0
)


@pytest.mark.anyio
async def test_an_embed_sent_while_a_long_prompt_is_read_is_answered_before_the_chat(tmp_path: Path) -> None:
    gates = {2: threading.Event(), 5: threading.Event()}
    adapter, forward = _gated_chat_adapter(tmp_path, gates)
    finished: list[str] = []
    try:
        await _embed(adapter, ["warm up"])

        async def chat() -> None:
            await adapter.chat(LONG_CHAT)
            finished.append("chat")

        async def embed() -> None:
            await _embed(adapter, ["rain"])
            finished.append("embed")

        async with anyio.create_task_group() as tg:
            tg.start_soon(chat)
            with anyio.fail_after(60):
                await anyio.to_thread.run_sync(lambda: _reach(forward, 2))
                async with anyio.create_task_group() as inner:
                    inner.start_soon(embed)
                    await anyio.wait_all_tasks_blocked()  # the embed is queued on the owner thread
                    gates[2].set()  # chunk 2 ends; the embed is served before chunk 3
            assert finished == ["embed"] and forward.calls <= 5
            gates[5].set()
        assert finished[-1] == "chat" and len(finished) == 2
    finally:
        for gate in gates.values():
            gate.set()
        await adapter.aclose()


def _reach(forward: GatedForward, n: int) -> None:
    """On a worker thread: until the chat model's forward call n has started."""
    assert forward.reached[n].wait(30), f"forward call {n} never started"


@pytest.mark.anyio
async def test_a_cancelled_chat_stops_reading_its_prompt_after_the_chunk_in_progress(tmp_path: Path) -> None:
    gates = {2: threading.Event()}
    adapter, forward = _gated_chat_adapter(tmp_path, gates)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(adapter.chat, LONG_CHAT)
            with anyio.fail_after(60):
                await anyio.to_thread.run_sync(lambda: _reach(forward, 2))
            tg.cancel_scope.cancel()  # the caller leaves while chunk 2 runs
        gates[2].set()
        chat = adapter._slots["lm"].model
        with anyio.fail_after(30):
            await anyio.to_thread.run_sync(chat.returned.wait)  # type: ignore[union-attr]
        (outcome,) = chat.outcomes  # type: ignore[union-attr]
        assert (outcome.finish_reason, outcome.prefilled_tokens, outcome.completion_tokens) == ("cancelled", 32, 0)
        assert forward.calls == 2  # chunk 2 was its last forward pass
        assert len((await _embed(adapter, ["sun"])).vectors) == 1
    finally:
        gates[2].set()
        await adapter.aclose()


@pytest.mark.anyio
async def test_a_chat_whose_prompt_cannot_be_read_before_its_deadline_is_refused_at_once(tmp_path: Path) -> None:
    adapter, forward = _gated_chat_adapter(tmp_path, {})
    try:
        with anyio.fail_after(60):
            await adapter.chat(ChatRequest("lm", (ChatMessage("user", "hi"),), 1, 0.0))
        chat = adapter._slots["lm"].model
        chat.prefill_tps = 20.0  # type: ignore[union-attr]
        calls = forward.calls
        with anyio.fail_after(5), pytest.raises(InvalidRequestError, match=r"needs \d+ tokens read.*5 s left"):
            await adapter.chat(LONG_CHAT)
        assert forward.calls == calls
    finally:
        await adapter.aclose()
