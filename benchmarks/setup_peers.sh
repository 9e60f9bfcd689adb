#!/usr/bin/env bash
# Installs the peers benchmark 14 compares against, isolated from the project's own environment:
#   .bench/node            ollama-mcp (npm), an MCP server for Ollama
#   .bench/litellm-venv    the LiteLLM proxy (PyPI), which serves POST /v1/embeddings
#   .bench/models          the all-minilm-l6-v2 model pack, for the MLX benchmarks (6 over MLX, 12),
#                          unless the default models dir already has it
# (litellm 1.106.12: the newest whose [proxy] extra resolves on the index; 1.107.0 was a compromised release.)
# Re-running is cheap: each step is skipped when its peer is already there.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bench="$root/.bench"
OLLAMA_MCP_VERSION="${OLLAMA_MCP_VERSION:-2.1.0}"
LITELLM_VERSION="${LITELLM_VERSION:-1.106.12}"
mkdir -p "$bench/node"

if [ ! -x "$bench/node/node_modules/.bin/ollama-mcp" ]; then
  echo "installing ollama-mcp@$OLLAMA_MCP_VERSION into $bench/node" >&2
  (cd "$bench/node" && npm install --no-audit --no-fund --silent "ollama-mcp@$OLLAMA_MCP_VERSION")
fi

if [ ! -x "$bench/litellm-venv/bin/litellm" ]; then
  echo "installing litellm[proxy]==$LITELLM_VERSION into $bench/litellm-venv" >&2
  python3 -m venv "$bench/litellm-venv"
  "$bench/litellm-venv/bin/pip" install --quiet --disable-pip-version-check "litellm[proxy]==$LITELLM_VERSION"
fi
python="${PYTHON:-$root/.venv/bin/python}"
default_models="${MODEL_GATEWAY_MODELS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/model-gateway/models}"
if [ ! -f "$default_models/all-minilm-l6-v2/.pack.json" ] && [ ! -f "$bench/models/all-minilm-l6-v2/.pack.json" ]; then
  echo "pulling model pack all-minilm-l6-v2 into $bench/models" >&2
  (cd "$root" && MODEL_GATEWAY_MODELS_DIR="$bench/models" "$python" -m server models pull all-minilm-l6-v2)
fi
echo "peers ready under $bench" >&2
