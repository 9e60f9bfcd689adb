"""One embed in a fresh process, as the old design did per request: load the model, embed, exit.

``python -m benchmarks.mlx_once MODELS_DIR`` prints nothing on success.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

from benchmarks.b_mlx import mlx_adapter


async def _once(models_dir: Path) -> None:
    adapter = mlx_adapter(models_dir)
    try:
        from adapters.types import EmbedRequest

        await adapter.embed(EmbedRequest(model="all-minilm-l6-v2", texts=("the quick brown fox",)))
    finally:
        await adapter.aclose()


if __name__ == "__main__":
    anyio.run(_once, Path(sys.argv[1]))
