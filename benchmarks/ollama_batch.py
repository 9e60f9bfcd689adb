"""One /api/embed request per batch vs one per text, through OllamaAdapter, against the fake Ollama.

Run from the repository root: ``python -m benchmarks.ollama_batch [--texts 64] [--rounds 30]``.
The fake runs as its own process (as Ollama would), so its work does not share
the client's interpreter. Its embedding cost per text is the same in every mode,
so the ratio measures what batching saves: per-request HTTP, parsing and
scheduling overhead. Modes are interleaved per round so machine noise hits all alike.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Awaitable, Callable

import anyio

from adapters.base import AdapterContext
from adapters.manifest import OllamaManifest
from adapters.ollama import OllamaAdapter
from adapters.types import EmbedRequest
from tests.support.fake_ollama import remote_counts, remote_reset, spawn

MODEL = "all-minilm"


def _texts(n: int) -> tuple[str, ...]:
    return tuple(f"benchmark sentence {i}: the quick brown fox jumps over the lazy dog" for i in range(n))


async def _batched(adapter: OllamaAdapter, texts: tuple[str, ...]) -> None:
    await adapter.embed(EmbedRequest(model=MODEL, texts=texts))


async def _per_text_sequential(adapter: OllamaAdapter, texts: tuple[str, ...]) -> None:
    for text in texts:
        await adapter.embed(EmbedRequest(model=MODEL, texts=(text,)))


async def _per_text_concurrent(adapter: OllamaAdapter, texts: tuple[str, ...]) -> None:
    async with anyio.create_task_group() as tg:
        for text in texts:
            tg.start_soon(adapter.embed, EmbedRequest(model=MODEL, texts=(text,)))


Mode = Callable[[OllamaAdapter, tuple[str, ...]], Awaitable[None]]
MODES: dict[str, Mode] = {
    "one request per batch": _batched,
    "one request per text, sequential": _per_text_sequential,
    "one request per text, concurrent": _per_text_concurrent,
}


async def _measure(url: str, n: int, rounds: int) -> dict[str, tuple[list[float], int]]:
    manifest = OllamaManifest(kind="ollama", name="bench", endpoint=url)
    adapter = OllamaAdapter(manifest, AdapterContext())
    texts = _texts(n)
    samples: dict[str, list[float]] = {name: [] for name in MODES}
    requests: dict[str, int] = {}
    try:
        for round_ in range(rounds + 3):  # three warm-up rounds
            for name, mode in MODES.items():
                await anyio.to_thread.run_sync(remote_reset, url)
                started = time.perf_counter()
                with anyio.fail_after(60):
                    await mode(adapter, texts)
                elapsed_ms = (time.perf_counter() - started) * 1000
                requests[name] = (await anyio.to_thread.run_sync(remote_counts, url)).get("/api/embed", 0)
                if round_ >= 3:
                    samples[name].append(elapsed_ms)
    finally:
        await adapter.aclose()
    return {name: (samples[name], requests[name]) for name in MODES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    with spawn() as url:
        results = anyio.run(_measure, url, args.texts, args.rounds)
    base = statistics.median(results["one request per batch"][0])
    print(f"{args.texts} texts, {args.rounds} rounds, fake Ollama in its own process")
    print(f"{'mode':<36} {'requests':>8} {'p50 ms':>9} {'p90 ms':>9} {'vs batch':>9}")
    for name, (samples, count) in results.items():
        p50 = statistics.median(samples)
        p90 = statistics.quantiles(samples, n=10)[-1]
        print(f"{name:<36} {count:>8} {p50:>9.2f} {p90:>9.2f} {p50 / base:>8.1f}x")


if __name__ == "__main__":
    main()
