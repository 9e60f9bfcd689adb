"""Chat generation with an mlx-lm model loaded from a local directory.

Everything here runs on the MLX runtime's owner thread: MLX arrays and
streams belong to the thread that made them. Importing this module pulls in
mlx-lm (and transformers), which costs over a second, so only that thread
imports it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import mlx.core as mx
from jinja2 import TemplateError
from mlx_lm import load as mlx_lm_load
from mlx_lm import stream_generate
from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache, trim_prompt_cache
from mlx_lm.sample_utils import make_sampler

from adapters.errors import InvalidRequestError, ModelLoadError, safe_detail

GenerationFinish = Literal["stop", "length", "cancelled"]
# Past this many tokens the KV cache (~46 KB a token for SmolLM2-135M in float32) is dropped, not kept for reuse.
MAX_CACHED_TOKENS = 4096
PULL_HINT = "run `model-gateway models pull smollm2-135m-instruct`"


@dataclass(frozen=True, slots=True)
class GenerationOutcome:
    text: str
    finish_reason: GenerationFinish
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token_s: float | None
    tokens_per_second: float | None


class ChatModel:
    """One loaded mlx-lm model and its tokenizer; not thread-safe, use from one thread."""

    def __init__(self, model: Any, tokenizer: Any, *, path: Path, context_length: int | None) -> None:
        self._model = model
        self._tokenizer = tokenizer
        self.path = path
        self.context_length = context_length
        self._cache: list[Any] | None = None
        self._cached_prompt: list[int] = []

    @classmethod
    def load(cls, path: Path) -> ChatModel:
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"chat model directory {path} is missing or has no config.json; {PULL_HINT}")
        try:
            model, tokenizer, config = mlx_lm_load(str(path), return_config=True)
        except (OSError, RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"cannot load chat model from {path}: {safe_detail(str(exc))}; {PULL_HINT}") from exc
        if tokenizer.chat_template is None:
            raise ModelLoadError(f"chat model at {path} has no chat template in tokenizer_config.json")
        context = config.get("max_position_embeddings")
        return cls(model, tokenizer, path=path, context_length=int(context) if context else None)

    def generate(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int,
        temperature: float,
        stop: list[str],
        should_stop: Callable[[], bool],
        on_token: Callable[[str, int], None] | None,
    ) -> GenerationOutcome:
        """Generate one assistant reply.

        `should_stop` is polled before the prompt is processed and between tokens. `on_token(delta, n)`
        receives each non-empty piece of new text once it can no longer turn out to be part of a stop
        string, with `n` the completion tokens so far; the pieces concatenate to the outcome's text.
        """
        started = time.perf_counter()
        if max_tokens < 1:
            raise InvalidRequestError("max_tokens must be at least 1")
        prompt = self._encode_prompt(messages)
        self._check_context(len(prompt), max_tokens)
        if should_stop():
            return GenerationOutcome("", "cancelled", len(prompt), 0, None, None)
        cache, fresh = self._take_cache(prompt)
        stream = stream_generate(
            self._model,
            self._tokenizer,
            mx.array(fresh),
            max_tokens=max_tokens,
            sampler=make_sampler(temp=temperature),
            prompt_cache=cache,
        )
        run = _Run(stop, on_token, started)
        try:
            run.consume(stream, should_stop)
        finally:
            stream.close()
        if cache[0].offset <= MAX_CACHED_TOKENS:
            self._cache, self._cached_prompt = cache, prompt
        return run.outcome(len(prompt))

    def _take_cache(self, prompt: list[int]) -> tuple[list[Any], list[int]]:
        """The previous call's KV cache cut back to the prefix it shares with `prompt`, and the tokens left to feed.

        Chat prompts repeat the system prompt and the conversation so far, so most of the prefill is reused.
        The cache is taken out while in use: a generation that fails leaves none behind.
        """
        cache, cached_prompt = self._cache, self._cached_prompt
        self._cache, self._cached_prompt = None, []
        if cache is None or not can_trim_prompt_cache(cache):
            return make_prompt_cache(self._model), prompt
        shared = 0
        for cached_token, token in zip(cached_prompt, prompt, strict=False):
            if cached_token != token:
                break
            shared += 1
        shared = min(shared, len(prompt) - 1)  # the model must see at least one new token to predict from
        trim_prompt_cache(cache, cache[0].offset - shared)
        return cache, prompt[shared:]

    def _encode_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        try:
            prompt: list[int] = self._tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        except (TemplateError, ValueError, KeyError, TypeError) as exc:
            raise InvalidRequestError(
                f"messages do not fit the model's chat template: {safe_detail(str(exc))}"
            ) from exc
        return list(prompt)

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

    def outcome(self, prompt_tokens: int) -> GenerationOutcome:
        ttft = None if self._first is None else self._first - self._started
        tps = None
        if self._first is not None and self._last is not None and self._tokens > 1 and self._last > self._first:
            tps = (self._tokens - 1) / (self._last - self._first)
        return GenerationOutcome(self._text, self._finish, prompt_tokens, self._tokens, ttft, tps)
