"""Chat generation with an mlx-lm model loaded from a local directory.

Everything here runs on the MLX runtime's owner thread: MLX arrays and
streams belong to the thread that made them. Importing this module pulls in
mlx-lm (and transformers), which costs over a second, so only that thread
imports it.

The owner thread is shared with embeddings and reranks, so a generation yields
at bounded intervals: the prompt is read (prefilled) in chunks sized to take
about PREFILL_CHUNK_S each, and between chunks and between tokens `should_stop`
serves the jobs waiting and says whether the caller is gone. A prompt that
cannot be read before the call's deadline, at the rate this model has been
measured to read prompts here, is refused before any work.

The weights run in the layout that is fast on this device (adapters/mlx_layout.py); on a CPU that may be
a numpy decoder called like mlx-lm's model, with a `read` method that extends the cache without logits.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import mlx.core as mx
from mlx_lm import load as mlx_lm_load
from mlx_lm import stream_generate
from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache, trim_prompt_cache
from mlx_lm.sample_utils import make_sampler

from adapters.errors import InvalidRequestError, ModelLoadError, safe_detail
from adapters.mlx_layout import choose_layout, return_freed_memory
from adapters.mlx_prompt import PromptEncoder
from adapters.mlx_runtime import Steering

GenerationFinish = Literal["stop", "length", "cancelled"]
# Past this many tokens the KV cache (~46 KB a token for SmolLM2-135M in float32) is dropped, not kept for reuse.
MAX_CACHED_TOKENS = 4096
PULL_HINT = "run `model-gateway models pull smollm2-135m-instruct`"
# About how long one prefill chunk holds the owner thread: jobs waiting behind a prompt wait about this
# long at most. Each chunk is sized from the rate of the one before, so chunks shrink as the context
# (and attention's share of the work) grows.
PREFILL_CHUNK_S = 0.25
STEP_QUANTUM, MAX_PREFILL_STEP = 16, 2048
CALIBRATION_TOKENS = 64
_RATE_WEIGHT = 0.3  # weight of the newest chunk in the running prompt-reading rate


@dataclass(frozen=True, slots=True)
class GenerationOutcome:
    text: str
    finish_reason: GenerationFinish
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token_s: float | None
    tokens_per_second: float | None
    prefilled_tokens: int = 0  # prompt tokens actually read (the rest came from the reused KV cache)


class _PrefillStopped(Exception):
    """The caller left or the deadline passed between two prompt chunks."""

    def __init__(self, read: int) -> None:
        super().__init__(f"stopped after {read} prompt tokens")
        self.read = read


class ChatModel:
    """One loaded mlx-lm model and its tokenizer; not thread-safe, use from one thread."""

    def __init__(
        self, model: Any, tokenizer: Any, *, path: Path, context_length: int | None, layout: str = "as stored"
    ) -> None:
        self._model = model
        self._tokenizer = tokenizer
        self._prompts = PromptEncoder(getattr(tokenizer, "_tokenizer", tokenizer))
        self.path = path
        self.context_length = context_length
        self.layout = layout
        self._cache: list[Any] | None = None
        self._cached_prompt: list[int] = []
        self.prefill_tps = 0.0  # prompt tokens read per second, measured at load and by every prefill
        self.prefill_step = MAX_PREFILL_STEP  # tokens in the next prompt chunk, sized by _observe
        self.chunk_s = PREFILL_CHUNK_S
        self.chunk_seconds: deque[float] = deque(maxlen=1024)  # recent prompt chunks' durations, for profiling
        self.clock: Callable[[], float] = time.monotonic  # what `deadline` is measured against

    @classmethod
    def load(cls, path: Path, between: Callable[[], object] = lambda: None) -> ChatModel:
        """Load, convert to this device's layout and calibrate; `between()` is called between the steps."""
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"chat model directory {path} is missing or has no config.json; {PULL_HINT}")
        try:
            model, tokenizer, config = mlx_lm_load(str(path), return_config=True)
        except (OSError, RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"cannot load chat model from {path}: {safe_detail(str(exc))}; {PULL_HINT}") from exc
        if tokenizer.chat_template is None:
            raise ModelLoadError(f"chat model at {path} has no chat template in tokenizer_config.json")
        between()
        model, layout = choose_layout(model, between)
        return_freed_memory()  # the weights the conversion dropped (quantized, copied into fused matrices)
        context = config.get("max_position_embeddings")
        chat = cls(model, tokenizer, path=path, context_length=int(context) if context else None, layout=layout)
        chat.calibrate()
        return chat

    def calibrate(self) -> None:
        """Time a short prefill (the second of two: the first pays one-off set-up) and size chunks from it."""
        ids = self._prompts.encode_text(" ".join(f"calibrating {i} tokens of a prompt" for i in range(32)))
        tokens = mx.array((ids * CALIBRATION_TOKENS)[:CALIBRATION_TOKENS])
        for _ in range(2):
            cache = make_prompt_cache(self._model)
            started = time.perf_counter()
            self._read(tokens, cache)
            seconds = time.perf_counter() - started
        self.prefill_tps = 0.0
        self._observe(CALIBRATION_TOKENS, seconds)

    def _observe(self, tokens: int, seconds: float) -> None:
        """Fold one chunk's rate into the running rate, and size the next chunk from it."""
        rate = tokens / max(seconds, 1e-6)
        self.chunk_seconds.append(seconds)
        old = self.prefill_tps
        self.prefill_tps = rate if old <= 0 else (1 - _RATE_WEIGHT) * old + _RATE_WEIGHT * rate
        step = int(rate * self.chunk_s) // STEP_QUANTUM * STEP_QUANTUM
        self.prefill_step = max(STEP_QUANTUM, min(MAX_PREFILL_STEP, step))

    def generate(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int,
        temperature: float,
        stop: list[str],
        steering: Steering,
    ) -> GenerationOutcome:
        """Generate one assistant reply.

        `steering.should_stop` is polled before the prompt is read, between prompt chunks and between tokens;
        so is `steering.deadline` (a time.monotonic() value). `steering.on_token(delta, n)` receives each
        non-empty piece of new text once it can no longer turn out to be part of a stop string, with `n` the
        completion tokens so far; the pieces concatenate to the outcome's text.
        """
        started = time.perf_counter()
        if max_tokens < 1:
            raise InvalidRequestError("max_tokens must be at least 1")
        prompt = self._prompts.encode(messages)
        self._check_context(len(prompt), max_tokens)

        deadline = steering.deadline

        def stop_now() -> bool:
            return steering.should_stop() or (deadline is not None and self.clock() >= deadline)

        if stop_now():
            return GenerationOutcome("", "cancelled", len(prompt), 0, None, None)
        shared = self._shared_prefix(prompt)
        self._check_time(len(prompt) - shared, deadline)
        cache, fresh = self._take_cache(prompt, shared)
        try:
            read = self._prefill(cache, fresh, stop_now)
        except _PrefillStopped as stopped:
            self._keep_cache(cache, prompt)  # what was read stays reusable: a retry resumes from there
            return GenerationOutcome("", "cancelled", len(prompt), 0, None, None, stopped.read)
        run = _Run(stop, steering.on_token, started)
        self._decode(run, cache, fresh[read:], max_tokens, temperature, stop_now)
        self._keep_cache(cache, prompt)
        return run.outcome(len(prompt), len(fresh))

    def _decode(
        self, run: _Run, cache: list[Any], rest: list[int], max_tokens: int, temp: float, stop: Callable[[], bool]
    ) -> None:
        """Feed the prompt's last token and generate; mlx-lm's loop, with `stop` polled between tokens."""
        stream = stream_generate(
            self._model,
            self._tokenizer,
            mx.array(rest),
            max_tokens=max_tokens,
            sampler=make_sampler(temp=temp),
            prompt_cache=cache,
        )
        try:
            run.consume(stream, stop)
        finally:
            stream.close()

    def _prefill(self, cache: list[Any], tokens: list[int], stop_now: Callable[[], bool]) -> int:
        """Read all but the last token into the cache, one chunk at a time, checking `stop_now` between chunks.

        Only the cache is evaluated: the logits of prompt tokens are never computed.
        """
        ids, read, last = mx.array(tokens), 0, len(tokens) - 1
        while read < last:
            step = min(self.prefill_step, last - read)
            started = time.perf_counter()
            self._read(ids[read : read + step], cache)
            self._observe(step, time.perf_counter() - started)
            read += step
            if stop_now():
                raise _PrefillStopped(read)
        return read

    def _read(self, tokens: mx.array, cache: list[Any]) -> None:
        """Extend the cache by prompt tokens; the numpy decoder computes no logits for them, MLX evaluates none."""
        read = getattr(self._model, "read", None)
        if read is not None:
            read(tokens[None], cache)
            return
        self._model(tokens[None], cache=cache)
        mx.eval([c.state for c in cache])

    def _shared_prefix(self, prompt: list[int]) -> int:
        if self._cache is None or not can_trim_prompt_cache(self._cache):
            return 0
        shared = 0
        for cached_token, token in zip(self._cached_prompt, prompt, strict=False):
            if cached_token != token:
                break
            shared += 1
        return min(shared, len(prompt) - 1)  # the model must see at least one new token to predict from

    def _take_cache(self, prompt: list[int], shared: int) -> tuple[list[Any], list[int]]:
        """The previous call's KV cache cut back to the prefix it shares with `prompt`, and the tokens left to feed.

        Chat prompts repeat the system prompt and the conversation so far, so most of the prefill is reused.
        The cache is taken out while in use: a generation that fails leaves none behind.
        """
        cache = self._cache
        self._cache, self._cached_prompt = None, []
        if cache is None or shared == 0:
            return make_prompt_cache(self._model), prompt
        trim_prompt_cache(cache, cache[0].offset - shared)
        return cache, prompt[shared:]

    def _keep_cache(self, cache: list[Any], prompt: list[int]) -> None:
        offset = int(cache[0].offset)
        if 0 < offset <= MAX_CACHED_TOKENS:
            self._cache, self._cached_prompt = cache, prompt[:offset]

    def _check_time(self, tokens: int, deadline: float | None) -> None:
        """Refuse a prompt whose reading would outlast the call (estimated from the measured rate)."""
        if deadline is None or self.prefill_tps <= 0:
            return
        left = deadline - self.clock()
        needed = tokens / self.prefill_tps
        if needed > left:
            raise InvalidRequestError(
                f"the prompt needs {tokens:,} tokens read, about {needed:,.0f} s at the {self.prefill_tps:,.0f} "
                f"tokens/s this model reads prompts here, but the call has {max(left, 0):,.0f} s left; "
                "shorten the prompt or the conversation"
            )

    def _check_context(self, prompt_tokens: int, max_tokens: int) -> None:
        if self.context_length is not None and prompt_tokens + max_tokens > self.context_length:
            raise InvalidRequestError(
                f"prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) exceeds the model's "
                f"context of {self.context_length} tokens"
            )


class _Run:
    """Accumulates one generation: stop-string matching, streaming hold-back, counters and timings."""

    def __init__(self, stop: list[str], on_token: Callable[[str, int], None] | None, started: float) -> None:
        self._stops = [s for s in stop if s]
        self._on_token = on_token
        self._started = started
        self._text = ""
        self._emitted = 0
        self._tokens = 0
        self._first: float | None = None
        self._last: float | None = None
        self._finish: GenerationFinish = "length"

    def consume(self, stream: Iterator[Any], should_stop: Callable[[], bool]) -> None:
        for response in stream:
            now = time.perf_counter()
            self._first = now if self._first is None else self._first
            self._last = now
            eos = response.finish_reason == "stop"
            self._tokens = response.generation_tokens - (1 if eos else 0)
            if self._append(response.text):
                self._finish = "stop"
                return
            if response.finish_reason is not None:
                self._flush(len(self._text))
                self._finish = "stop" if eos else "length"
                return
            if should_stop():
                self._flush(len(self._text))
                self._finish = "cancelled"
                return

    def _append(self, segment: str) -> bool:
        """Add new text; True when a stop string completed (the text is then cut before it)."""
        search_from = max(0, len(self._text) - max((len(s) for s in self._stops), default=0) + 1)
        self._text += segment
        hits = [i for s in self._stops if (i := self._text.find(s, search_from)) >= 0]
        if hits:
            self._text = self._text[: min(hits)]
            self._flush(len(self._text))
            return True
        self._flush(len(self._text) - self._held_back())
        return False

    def _held_back(self) -> int:
        """Length of the longest tail of the text that could still grow into a stop string."""
        longest = 0
        for s in self._stops:
            for k in range(min(len(s) - 1, len(self._text)), longest, -1):
                if self._text.endswith(s[:k]):
                    longest = k
                    break
        return longest

    def _flush(self, upto: int) -> None:
        if upto > self._emitted:
            delta = self._text[self._emitted : upto]
            self._emitted = upto
            if self._on_token is not None:
                self._on_token(delta, self._tokens)

    def outcome(self, prompt_tokens: int, prefilled: int) -> GenerationOutcome:
        ttft = None if self._first is None else self._first - self._started
        tps = None
        if self._first is not None and self._last is not None and self._tokens > 1 and self._last > self._first:
            tps = (self._tokens - 1) / (self._last - self._first)
        return GenerationOutcome(self._text, self._finish, prompt_tokens, self._tokens, ttft, tps, prefilled)
