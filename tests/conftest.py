from __future__ import annotations

import os
from collections.abc import AsyncIterator

import anyio
import pytest
from anyio.abc import TaskGroup

# Tests never reach a hub: model loading code must work from local directories.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def tasks(anyio_backend: str) -> AsyncIterator[TaskGroup]:
    """A task group that owns adapters' background work for one test, as the state's does in the server.

    Pass it as `AdapterContext(tasks=...)`; whatever is still running when the test ends is cancelled.
    """
    async with anyio.create_task_group() as tg:
        yield tg
        tg.cancel_scope.cancel()
