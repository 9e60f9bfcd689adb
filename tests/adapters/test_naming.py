"""Model identity per backend, and the one rule that reads capabilities from a model's name."""

from __future__ import annotations

import pytest

from adapters.naming import canonical_model, capabilities_from_name, ollama_model_name


@pytest.mark.parametrize(
    "spelling",
    [
        "llama3.2:1b",
        "LLAMA3.2:1B",
        "library/llama3.2:1b",
        "registry.ollama.ai/library/llama3.2:1b",
        "Registry.Ollama.AI/Library/Llama3.2:1b",
        " llama3.2:1b ",
    ],
)
def test_every_spelling_ollama_resolves_to_one_model_is_one_name(spelling: str) -> None:
    assert ollama_model_name(spelling) == "llama3.2:1b"


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("nomic-embed-text", "nomic-embed-text:latest"),
        ("registry.ollama.ai/library/nomic-embed-text", "nomic-embed-text:latest"),
        ("registry.ollama.ai/team/model", "team/model:latest"),
        ("myhost:5000/team/model", "myhost:5000/team/model:latest"),
        ("myhost:5000/team/model:v2", "myhost:5000/team/model:v2"),
        ("model@sha256:ABC", "model@sha256:abc"),
        ("", ""),
    ],
)
def test_ollama_names_keep_what_is_not_a_default(name: str, canonical: str) -> None:
    assert ollama_model_name(name) == canonical
    assert ollama_model_name(canonical) == canonical  # idempotent


def test_adapters_without_a_naming_rule_keep_names_as_given() -> None:
    class Plain:
        pass

    class Folding:
        def canonical_model(self, name: str) -> str:
            return name.lower()

    assert canonical_model(Plain(), "Org/Model-X") == "Org/Model-X"
    assert canonical_model(Folding(), "Org/Model-X") == "org/model-x"


@pytest.mark.parametrize(
    ("name", "family", "expected"),
    [
        ("bge-reranker-v2-m3", None, {"rerank"}),
        ("BAAI/bge-small-en-v1.5", None, {"embed"}),
        ("text-embedding-3-small", None, {"embed"}),
        ("all-minilm:latest", "bert", {"embed"}),
        ("mxbai-embed-large", "bert", {"embed"}),
        ("intfloat/e5-large-v2", None, {"embed"}),
        ("thenlper/gte-base", None, {"embed"}),
        ("llama3.2:1b", "llama", {"chat"}),
        ("gpt-4o-mini", None, {"chat"}),
        ("debertalike-chat", "llama", {"chat"}),
    ],
)
def test_one_rule_reads_capabilities_from_names(name: str, family: str | None, expected: set[str]) -> None:
    assert capabilities_from_name(name, family) == expected
