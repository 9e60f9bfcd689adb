"""Fixtures shared by the end-to-end tests: one fake Ollama process per module, and manifests routing to it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fake_ollama import spawn
from tests.support.processes import ollama_manifests


@pytest.fixture(scope="module")
def ollama_url() -> Iterator[str]:
    with spawn() as url:
        yield url


@pytest.fixture
def manifests(tmp_path: Path, ollama_url: str) -> Path:
    """A user manifests dir that routes every capability to the module's fake Ollama."""
    return ollama_manifests(tmp_path / "manifests", ollama_url)
