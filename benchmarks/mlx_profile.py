"""MLX adapter profile: embed latency by batch size, chat speed by prompt length, and embeds during a long chat.

`python -m benchmarks.mlx_profile [--reference-blas] [--quick] [--embed-only] [--chat-load-only]` (needs
`model-gateway models pull`). Prints one JSON object (`--embed-only`: the encoder's figures alone;
`--chat-load-only`: the chat model's load alone, in this fresh process: its time and the process's peak and
resident memory after it):

- `embed_<n>_ms_p50`: one embed call of n short texts, median of 7 (encoder-only adapter);
- `chat_short_*`: three 64-token replies to ~30-token questions (different questions, so only the template's
  system prompt is reused from the KV cache): time to first token, generation rate, end-to-end tokens/s;
- `chat_long_*`: a ~2,000-token prompt (64-token reply) while 1-text embeds are sent one after another:
  time to first token, prompt tokens/s, and the embeds' p50/p95/p99/max during the prompt and during generation
  against the idle embed p50, with the number that hit the 30 s embed deadline;
- `chat_2700_*`: a ~2,700-token prompt under the shipped 120 s chat deadline: answered or not, and how fast.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import anyio

from adapters.base import AdapterContext
from adapters.manifest import MLXManifest
from adapters.mlx_local import MLXAdapter
from adapters.types import ChatMessage, ChatRequest, EmbedRequest
from server.paths import default_models_dir

ROOT = Path(__file__).resolve().parents[1]
ENCODER, LM = "all-minilm-l6-v2", "smollm2-135m-instruct"
EMBED_DEADLINE_S, CHAT_DEADLINE_S = 30.0, 120.0
QUESTIONS = (
    "What is the capital of France? Answer in one sentence, please.",
    "Name three colours of the rainbow and say which one you like most.",
    "Why is the sky blue during the day? Explain it simply, for a child.",
)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float | None:
    """The process's resident memory now (Linux), or None."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    kib = next((line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")), None)
    return None if kib is None else round(int(kib) / 1024, 1)


def quantiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    if not ordered:
        return {"n": 0}

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {
        "n": len(ordered),
        "p50": round(statistics.median(ordered), 1),
        "p95": round(rank(0.95), 1),
        "p99": round(rank(0.99), 1),
        "max": round(ordered[-1], 1),
    }


def long_prompt(notes: int, place: str = "harbour") -> str:
    """About 32 tokens a note; prompts about different places share no prefix past the chat template's."""
    lines = [
        f"Note {i}: a shipment of {i * 7 + 3} crates left the {place} at {i % 24}:00, arriving {i % 5 + 1} days later."
        for i in range(notes)
    ]
    return f"{place.capitalize()} notes follow.\n" + "\n".join(lines) + "\nWhich note mentions the most crates?"


def adapter(models: list[str]) -> MLXAdapter:
    shipped = json.loads((ROOT / "manifests" / "adapters" / "mlx.json").read_text())
    if "--reference-blas" in sys.argv:
        shipped["options"] = {**shipped.get("options", {}), "blas": "reference"}
    shipped["models"] = [m for m in shipped["models"] if m["name"] in models]
    return MLXAdapter(MLXManifest.model_validate(shipped), AdapterContext(models_dir=default_models_dir(os.environ)))


async def embed_ms(mlx: MLXAdapter, texts: tuple[str, ...]) -> float:
    started = time.perf_counter()
    with anyio.fail_after(EMBED_DEADLINE_S):
        await mlx.embed(EmbedRequest(ENCODER, texts))
    return (time.perf_counter() - started) * 1000


async def encoder_profile(out: dict[str, Any], rounds: int) -> None:
    mlx = adapter([ENCODER])
    try:
        texts = tuple(f"sentence number {i} about a cat that sat on a mat" for i in range(128))
        await embed_ms(mlx, texts[:8])
        out["rss_mib_encoder_loaded"] = round(peak_rss_mib(), 1)
        for n in (1, 8, 32, 128):
            await embed_ms(mlx, texts[:n])
            out[f"embed_{n}_ms_p50"] = round(
                statistics.median([await embed_ms(mlx, texts[:n]) for _ in range(rounds)]), 1
            )
        out["blas"] = mlx.blas
    finally:
        await mlx.aclose()


def chat_request(text: str, max_tokens: int, progress: Any = None) -> ChatRequest:
    return ChatRequest(LM, (ChatMessage("user", text),), max_tokens=max_tokens, temperature=0.0, progress=progress)


async def short_chats(mlx: MLXAdapter, out: dict[str, Any]) -> None:
    ttft, rate, e2e = [], [], []
    for question in QUESTIONS:
        started = time.perf_counter()
        with anyio.fail_after(CHAT_DEADLINE_S):
            reply = await mlx.chat(chat_request(question, 64))
        wall = time.perf_counter() - started
        ttft.append(reply.timings.time_to_first_token_ms or 0.0)
        rate.append(reply.timings.tokens_per_second or 0.0)
        e2e.append(reply.usage.output_tokens / wall)
        out["chat_short_prompt_tokens"] = reply.usage.input_tokens
    out["chat_short_ttft_ms"] = [round(v) for v in ttft]
    out["chat_short_generation_tok_s"] = round(statistics.median(rate), 1)
    out["chat_short_end_to_end_tok_s"] = round(statistics.median(e2e), 1)
    out["chat_short_reply"] = reply.content[:80]


async def embeds_during_long_chat(mlx: MLXAdapter, out: dict[str, Any], rounds: int) -> None:
    idle = [await embed_ms(mlx, ("the quick brown fox",)) for _ in range(rounds * 4)]
    out["embed_idle_ms"] = quantiles(idle)
    phase = {"now": "prefill"}
    during: dict[str, list[float]] = {"prefill": [], "generation": []}
    timeouts, result = 0, {}

    async def progress(done: float, total: float | None, message: str | None) -> None:
        if message == "first token":
            phase["now"] = "generation"

    async def chat() -> None:
        started = time.perf_counter()
        reply = await mlx.chat(chat_request(long_prompt(63), 64, progress))
        result.update(reply=reply, wall=time.perf_counter() - started)

    # The chat model keeps its prompt chunks' durations (the benchmark reads the adapter's internals here).
    lm = mlx._slots[LM].model
    getattr(lm, "chunk_seconds", []).clear()
    async with anyio.create_task_group() as tg:
        tg.start_soon(chat)
        await anyio.sleep(0.2)
        while not result:
            started_in = phase["now"]
            try:
                during[started_in].append(await embed_ms(mlx, ("the quick brown fox",)))
            except TimeoutError:
                timeouts += 1
    out["embed_during_long_prefill_ms"] = quantiles(during["prefill"])
    out["embed_during_long_generation_ms"] = quantiles(during["generation"])
    out["embed_timeouts_during_long_chat"] = timeouts
    report_long_chat(out, result["reply"], result["wall"], getattr(lm, "chunk_seconds", ()))


def report_long_chat(out: dict[str, Any], reply: Any, wall: float, chunk_seconds: Any) -> None:
    ttft_s = (reply.timings.time_to_first_token_ms or 0.0) / 1000
    out["chat_long_prompt_tokens"] = reply.usage.input_tokens
    out["chat_long_ttft_ms"] = round(ttft_s * 1000)
    out["chat_long_prompt_tok_s"] = round(reply.usage.input_tokens / ttft_s) if ttft_s else None
    out["chat_long_generation_tok_s"] = round(reply.timings.tokens_per_second or 0.0, 1)
    out["chat_long_end_to_end_s"] = round(wall, 1)
    out["chat_long_prompt_chunk_ms"] = quantiles([s * 1000 for s in chunk_seconds])


async def chat_2700(mlx: MLXAdapter, out: dict[str, Any]) -> None:
    started = time.perf_counter()
    try:
        with anyio.fail_after(CHAT_DEADLINE_S):
            reply = await mlx.chat(chat_request(long_prompt(85, "airport"), 16))
    except TimeoutError:
        out["chat_2700_answered"] = f"no: timed out at {CHAT_DEADLINE_S:g} s"
        return
    ttft_s = (reply.timings.time_to_first_token_ms or 0.0) / 1000
    out["chat_2700_answered"] = f"yes, in {time.perf_counter() - started:.1f} s"
    out["chat_2700_prompt_tokens"] = reply.usage.input_tokens
    out["chat_2700_prompt_tok_s"] = round(reply.usage.input_tokens / ttft_s) if ttft_s else None


async def chat_profile(out: dict[str, Any], rounds: int) -> None:
    mlx = adapter([ENCODER, LM])
    try:
        started = time.perf_counter()
        with anyio.fail_after(300):
            await mlx.chat(chat_request("Hi", 1))
            await embed_ms(mlx, ("warm up",))
        out["load_and_first_chat_s"] = round(time.perf_counter() - started, 2)
        await short_chats(mlx, out)
        await embeds_during_long_chat(mlx, out, rounds)
        await chat_2700(mlx, out)
        out["rss_mib_with_chat"] = round(peak_rss_mib(), 1)
        out["health"] = dict((await mlx.probe()).details)
    finally:
        await mlx.aclose()


async def chat_load(out: dict[str, Any]) -> None:
    mlx = adapter([LM])
    try:
        out["rss_mib_before"] = rss_mib()
        started = time.perf_counter()
        with anyio.fail_after(300):
            await mlx.chat(chat_request("Hi", 1))
        out["load_and_first_chat_s"] = round(time.perf_counter() - started, 2)
        out["rss_mib_peak"] = round(peak_rss_mib(), 1)
        out["rss_mib_after"] = rss_mib()
        out["layout"] = dict((await mlx.probe()).details).get(f"{LM} layout")
    finally:
        await mlx.aclose()


async def main() -> None:
    rounds = 3 if "--quick" in sys.argv else 7
    out: dict[str, Any] = {}
    if "--chat-load-only" in sys.argv:
        await chat_load(out)
        print(json.dumps(out, indent=1))
        return
    await encoder_profile(out, rounds)
    if "--embed-only" not in sys.argv:
        await chat_profile(out, rounds)
    print(json.dumps(out, indent=1))


FLAGS = ("--reference-blas", "--quick", "--embed-only", "--chat-load-only")
USAGE = f"usage: python -m benchmarks.mlx_profile [{'] ['.join(FLAGS)}]"

if __name__ == "__main__":
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(USAGE)
        sys.exit(0)
    unknown = [a for a in sys.argv[1:] if a not in FLAGS]
    if unknown:  # a profile takes a minute or more and loads every pack: nothing starts on a typo
        sys.exit(f"{USAGE}\nunknown: {' '.join(unknown)}")
    anyio.run(main)
