from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx
import pytest

from adapters.errors import InvalidRequestError, ModelLoadError
from adapters.mlx_chat import ChatModel, GenerationOutcome
from adapters.mlx_runtime import Steering
from tests.support.smollm2 import SKIP_REASON, smollm2_dir
from tests.support.tiny_lm import CONTEXT_LENGTH, build_tiny_lm

MESSAGES = [{"role": "user", "content": "Say something about the number 42."}]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> ChatModel:
    return ChatModel.load(build_tiny_lm(tmp_path_factory.mktemp("tiny-lm")))


def never() -> bool:
    return False


def generate(
    model: ChatModel,
    *,
    max_tokens: int = 12,
    temperature: float = 0.0,
    stop: list[str] | None = None,
    should_stop: Callable[[], bool] = never,
    pieces: list[tuple[str, int]] | None = None,
) -> GenerationOutcome:
    on_token = None if pieces is None else (lambda text, n: pieces.append((text, n)))
    return model.generate(
        MESSAGES,
        max_tokens=max_tokens,
        temperature=temperature,
        stop=stop or [],
        steering=Steering(should_stop, on_token),
    )


def test_load_of_a_missing_directory_names_the_path_and_the_pull_command(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "smollm2-135m-instruct"
    with pytest.raises(ModelLoadError) as info:
        ChatModel.load(missing)
    assert str(missing) in str(info.value)
    assert "model-gateway models pull smollm2-135m-instruct" in str(info.value)
    assert "Repo id" not in str(info.value)


@pytest.mark.parametrize("damage", ["delete", "corrupt"])
def test_load_of_a_directory_with_missing_or_corrupt_weights_is_a_model_load_error(tmp_path: Path, damage: str) -> None:
    broken = build_tiny_lm(tmp_path / "lm")
    weights = broken / "model.safetensors"
    if damage == "delete":
        weights.unlink()
    else:
        weights.write_bytes(b"\x00not a safetensors header")
    with pytest.raises(ModelLoadError, match="cannot load chat model") as info:
        ChatModel.load(broken)
    assert "Traceback" not in str(info.value) and "\n" not in str(info.value)


def test_generation_stops_at_max_tokens_with_length_finish(tiny_model: ChatModel) -> None:
    out = generate(tiny_model, max_tokens=9)
    assert out.finish_reason == "length"
    assert out.completion_tokens == 9
    assert out.prompt_tokens > 0
    assert out.time_to_first_token_s is not None and out.time_to_first_token_s > 0
    assert out.tokens_per_second is not None and out.tokens_per_second > 0


def test_temperature_zero_gives_the_same_reply_twice(tiny_model: ChatModel) -> None:
    first, second = generate(tiny_model, max_tokens=16), generate(tiny_model, max_tokens=16)
    assert first.text == second.text
    assert first.completion_tokens == second.completion_tokens == 16


def test_on_token_pieces_concatenate_to_the_text_with_growing_counts(tiny_model: ChatModel) -> None:
    pieces: list[tuple[str, int]] = []
    out = generate(tiny_model, max_tokens=16, pieces=pieces)
    assert pieces, "on_token was never called"
    assert "".join(text for text, _ in pieces) == out.text
    counts = [n for _, n in pieces]
    assert counts == sorted(counts) and counts[0] >= 1 and counts[-1] <= out.completion_tokens
    assert all(text for text, _ in pieces)


def test_stop_string_spanning_tokens_cuts_the_text_and_finishes_with_stop(tiny_model: ChatModel) -> None:
    baseline = generate(tiny_model, max_tokens=64).text
    # The first character not seen before makes a two-character stop string whose first match is known.
    fresh = next((i for i in range(1, len(baseline)) if baseline[i] not in baseline[:i]), None)
    assert fresh is not None, "the tiny model's greedy output never changes character"
    stop = baseline[fresh - 1 : fresh + 1]
    pieces: list[tuple[str, int]] = []
    out = generate(tiny_model, max_tokens=64, stop=["never-produced", stop], pieces=pieces)
    assert out.finish_reason == "stop"
    assert out.text == baseline[: fresh - 1]
    assert out.completion_tokens < 64
    assert "".join(text for text, _ in pieces) == out.text


def test_should_stop_cancels_between_tokens(tiny_model: ChatModel) -> None:
    polls = 0

    def should_stop() -> bool:
        nonlocal polls
        polls += 1
        return polls > 3  # polled once before the prompt, then after each token

    pieces: list[tuple[str, int]] = []
    out = generate(tiny_model, max_tokens=50, should_stop=should_stop, pieces=pieces)
    assert out.finish_reason == "cancelled"
    assert out.completion_tokens == 3
    assert len(pieces) <= 3
    assert "".join(text for text, _ in pieces) == out.text


def test_should_stop_before_the_prompt_returns_without_generating(tiny_model: ChatModel) -> None:
    pieces: list[tuple[str, int]] = []
    out = generate(tiny_model, should_stop=lambda: True, pieces=pieces)
    assert (out.finish_reason, out.completion_tokens, out.text, pieces) == ("cancelled", 0, "", [])
    assert out.prompt_tokens > 0


def test_sampling_with_temperature_stays_within_max_tokens(tiny_model: ChatModel) -> None:
    out = generate(tiny_model, max_tokens=10, temperature=1.0)
    assert out.finish_reason in ("length", "stop")
    assert 0 <= out.completion_tokens <= 10
    assert out.finish_reason == "stop" or out.completion_tokens == 10


@pytest.mark.parametrize("turn", ["follow-up", "new-question"])
def test_a_prompt_sharing_a_prefix_with_the_last_one_gets_the_reply_a_fresh_model_gives(
    tiny_model: ChatModel, turn: str
) -> None:
    first = generate(tiny_model, max_tokens=8).text
    if turn == "follow-up":
        messages = [*MESSAGES, {"role": "assistant", "content": first}, {"role": "user", "content": "And 43?"}]
    else:
        messages = [{"role": "user", "content": "Say nothing about the number 42."}]
    kwargs: dict[str, Any] = {"max_tokens": 24, "temperature": 0.0, "stop": [], "steering": Steering()}
    reused = tiny_model.generate(messages, **kwargs)
    fresh = ChatModel.load(tiny_model.path).generate(messages, **kwargs)
    assert reused.text == fresh.text
    assert reused.prompt_tokens == fresh.prompt_tokens
    assert reused.completion_tokens == fresh.completion_tokens == 24


def test_max_tokens_below_one_is_an_invalid_request(tiny_model: ChatModel) -> None:
    with pytest.raises(InvalidRequestError, match="max_tokens"):
        generate(tiny_model, max_tokens=0)


def test_prompt_plus_max_tokens_beyond_the_context_is_an_invalid_request(tiny_model: ChatModel) -> None:
    with pytest.raises(InvalidRequestError, match="context"):
        generate(tiny_model, max_tokens=CONTEXT_LENGTH)


def test_a_worker_thread_loads_and_generates_then_releases_its_streams(tmp_path: Path) -> None:
    path = build_tiny_lm(tmp_path / "lm")
    results: list[GenerationOutcome | BaseException] = []

    def owner() -> None:
        try:
            results.append(generate(ChatModel.load(path), max_tokens=5))
        except BaseException as exc:
            results.append(exc)
        finally:
            mx.clear_streams()  # without it the process may abort at exit

    thread = threading.Thread(target=owner)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert len(results) == 1 and isinstance(results[0], GenerationOutcome)
    assert results[0].completion_tokens == 5


@pytest.mark.packs
def test_smollm2_knows_the_capital_of_france() -> None:
    path = smollm2_dir()
    if path is None:
        pytest.skip(SKIP_REASON)
    model = ChatModel.load(path)
    out = model.generate(
        [{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=20,
        temperature=0.0,
        stop=[],
        steering=Steering(),
    )
    assert "Paris" in out.text
    assert out.finish_reason in ("stop", "length")


# --- the prompt in chunks, with stops and deadlines between them -----------------

LONG = [{"role": "user", "content": " ".join(f"item {i} is the quick brown fox" for i in range(60))}]


def _chunked(path: Path) -> ChatModel:
    """A fresh model reading prompts 16 tokens at a time (the smallest chunk), so a prompt spans many chunks."""
    model = ChatModel.load(path)
    model.chunk_s = 0.0
    model.prefill_step = 16
    return model


def _generate_long(
    model: ChatModel, should_stop: Callable[[], bool] = never, deadline: float | None = None
) -> GenerationOutcome:
    return model.generate(LONG, max_tokens=8, temperature=0.0, stop=[], steering=Steering(should_stop, None, deadline))


def test_a_prefill_stopped_by_the_caller_ends_after_the_chunk_in_progress(tiny_model: ChatModel) -> None:
    model = _chunked(tiny_model.path)
    polls = 0

    def should_stop() -> bool:
        nonlocal polls
        polls += 1
        return polls > 3  # once before the prompt, then after each chunk: stop after the third

    out = _generate_long(model, should_stop=should_stop)
    assert out.prompt_tokens > 100
    assert (out.finish_reason, out.completion_tokens, out.text) == ("cancelled", 0, "")
    assert out.prefilled_tokens == 3 * 16
    # What was read is kept: the retry reads only the rest and answers as a fresh model does.
    retry = _generate_long(model)
    assert retry.prefilled_tokens == out.prompt_tokens - 3 * 16
    assert retry.text == _generate_long(_chunked(tiny_model.path)).text


def test_a_prefill_past_its_deadline_ends_after_the_chunk_in_progress(tiny_model: ChatModel) -> None:
    model = _chunked(tiny_model.path)
    now = [100.0]
    model.clock = lambda: now[0]

    def should_stop() -> bool:
        now[0] += 1.0  # each chunk takes one second on this clock
        return False

    out = _generate_long(model, should_stop=should_stop, deadline=102.5)
    assert out.finish_reason == "cancelled" and out.prefilled_tokens == 2 * 16


def test_a_prompt_that_cannot_be_read_before_the_deadline_is_refused_before_any_work(tiny_model: ChatModel) -> None:
    model = _chunked(tiny_model.path)
    model.prefill_tps = 50.0
    polls = 0

    def should_stop() -> bool:
        nonlocal polls
        polls += 1
        return False

    with pytest.raises(InvalidRequestError) as info:
        _generate_long(model, should_stop=should_stop, deadline=model.clock() + 1.0)
    assert "tokens read, about" in str(info.value) and "at the 50 tokens/s this model reads prompts here" in str(
        info.value
    )
    assert polls == 1  # the check before the prompt only; no chunk was read
    assert _generate_long(model, deadline=model.clock() + 3600).finish_reason == "length"


def test_chunks_are_sized_from_the_measured_rate(tiny_model: ChatModel) -> None:
    model = ChatModel.load(tiny_model.path)
    assert model.prefill_tps > 0 and model.prefill_step % 16 == 0 and 16 <= model.prefill_step <= 2048
    model.chunk_s = 0.0
    out = _generate_long(model)
    assert out.prefilled_tokens == out.prompt_tokens and model.prefill_step == 16
