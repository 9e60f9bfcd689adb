"""Fixtures shared by the encoder tests: tiny BERT model directories written once per module."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.tiny_bert import write_tiny_bert


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def tiny_cross_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-cross"), seed=1, cross_encoder=True)
