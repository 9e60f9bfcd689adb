"""Fixtures of the server tests that start real servers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.redis_server import MISSING, redis_server, run_redis


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on loopback, one per test module; the test skips where none is installed."""
    if redis_server() is None:
        pytest.skip(MISSING)
    with run_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url
