"""Adapter manifests: one JSON file per adapter instance, a discriminated union on `kind`.

Every model forbids unknown fields, so a typo in a manifest is an error that
names the file and the field instead of a silently ignored setting.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from adapters.types import Capability, Privacy

ADAPTER_NAME = r"^[a-z0-9][a-z0-9_-]{0,62}$"
MAX_DIMENSIONS = 65_536
MAX_RESPONSE_BYTES = 1 << 30
MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:@/+-]{0,199}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    name: str = Field(pattern=MODEL_NAME, description="Model name as the backend knows it.")
    capabilities: list[Capability] = Field(min_length=1, description="What this model serves.")
    aliases: list[str] = Field(default_factory=list, description="Other names that route to this model.")
    dimensions: int | None = Field(
        None,
        ge=1,
        le=MAX_DIMENSIONS,
        description=(
            "Width of this model's embedding vectors. Every answer is checked against it; unset, the first "
            "answer fixes the width for the adapter's lifetime."
        ),
    )


class _ManifestBase(_Strict):
    name: str = Field(pattern=ADAPTER_NAME, description="Unique adapter name; also the prefix in 'adapter/model'.")
    enabled: bool = True
    description: str | None = None


class _HTTPManifest(_ManifestBase):
    max_response_bytes: int | None = Field(
        None,
        ge=1024,
        le=MAX_RESPONSE_BYTES,
        description=(
            "Largest answer read from the upstream, in bytes; a larger one is refused while it arrives. "
            "Unset: 33554432 (32 MiB)."
        ),
    )


# --- ollama -------------------------------------------------------------------


class OllamaOptions(_Strict):
    keep_alive: str = Field("5m", description="How long Ollama keeps a model loaded after a call.")
    truncate: bool = Field(True, description="Let Ollama truncate inputs longer than the model's context.")


class OllamaManifest(_HTTPManifest):
    kind: Literal["ollama"]
    endpoint: str = Field("http://127.0.0.1:11434", description="Base URL of the Ollama server.")
    privacy: Privacy = "local"
    models: list[ModelSpec] = Field(
        default_factory=list,
        description="Models to route here. Empty: take every model the server lists, chat-capable by default.",
    )
    options: OllamaOptions = OllamaOptions()


# --- openai-compatible --------------------------------------------------------


class OpenAIOptions(_Strict):
    rerank_path: str | None = Field(None, description="Rerank endpoint path, e.g. '/v1/rerank'. None: no rerank.")
    rerank_style: Literal["cohere", "tei"] = "cohere"
    embed_encoding: Literal["auto", "float", "base64"] = "auto"
    organization: str | None = None
    batch_limit: int | None = Field(
        None,
        ge=1,
        le=4096,
        description=(
            "Texts per upstream embed request. Unset: performance-config's batch_limit. "
            "text-embeddings-inference accepts 32 by default (its --max-client-batch-size)."
        ),
    )


class OpenAIManifest(_HTTPManifest):
    kind: Literal["openai"]
    endpoint: str = Field(description="Base URL, e.g. 'https://api.openai.com'.")
    privacy: Privacy = "remote"
    api_key_env: str | None = Field(None, description="Environment variable holding the API key (never the key).")
    http2: bool = False
    models: list[ModelSpec] = Field(default_factory=list)
    options: OpenAIOptions = OpenAIOptions()


# --- mlx in-process -----------------------------------------------------------


class MLXModelSpec(ModelSpec):
    role: Literal["encoder", "cross-encoder", "lm"] = Field(
        description="encoder: BERT embeddings; cross-encoder: BERT sequence classifier; lm: mlx-lm generation."
    )
    pack: str | None = Field(
        None, description="A model pack from models.json, installed by 'model-gateway models pull'."
    )
    path: str | None = Field(None, description="A local model directory (HF layout). Wins over `pack`.")

    @model_validator(mode="after")
    def _source(self) -> MLXModelSpec:
        if not self.pack and not self.path:
            raise ValueError("set `pack` (a model pack name) or `path` (a local model directory)")
        return self


class MLXOptions(_Strict):
    preload: bool = Field(True, description="Load models in the background at start instead of on first call.")
    fast_gelu: bool = Field(True, description="Use a rational GELU approximation (cosine >= 0.999999 vs exact).")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="Encoder weights and activations; auto: float16 on a GPU, float32 on CPU."
    )
    max_batch_tokens: int = Field(
        16384, ge=512, description="Padded tokens per encoder forward pass; larger batches are split."
    )
    max_tokens: int = Field(512, ge=1, description="Generation length when a chat call does not set max_tokens.")
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="Sampling temperature when a chat call sets none.")
    blas: Literal["auto", "reference"] = Field(
        "auto",
        description="auto: use an installed OpenBLAS on Linux CPUs (same results, ~20x faster); reference: never.",
    )


class MLXManifest(_ManifestBase):
    kind: Literal["mlx"]
    privacy: Literal["local"] = "local"
    models: list[MLXModelSpec] = Field(min_length=1)
    options: MLXOptions = MLXOptions()


# --- remote MCP ---------------------------------------------------------------


# Gateway fields an MCP tool mapping may pass downstream, per capability.
MCP_GATEWAY_FIELDS: dict[Capability, frozenset[str]] = {
    "embed": frozenset({"input", "texts", "model", "dimensions"}),
    "rerank": frozenset({"query", "documents", "top_n", "model"}),
    "chat": frozenset({"messages", "model", "max_tokens", "temperature", "stop"}),
}


class MCPToolMapping(_Strict):
    tool: str = Field(description="Name of the downstream tool that implements the capability.")
    arguments: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Downstream argument name -> gateway field (e.g. {'texts': 'input', 'model': 'model'}). "
            "Empty: pass every gateway field the tool's input schema lists under the same name."
        ),
    )
    result: str | None = Field(None, description="Dotted path into the downstream structured result.")
    schema_sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description=(
            "Pin of the tool's input schema (sha256 of its canonical JSON). Unset: the first schema seen is "
            "trusted and any later change disables the mapping until the manifest is checked."
        ),
    )


class MCPManifest(_ManifestBase):
    kind: Literal["mcp"]
    privacy: Privacy = "local"
    command: list[str] | None = Field(None, description="Start the downstream over stdio with this argv.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment for the stdio command.")
    url: str | None = Field(None, description="Streamable HTTP URL of the downstream server.")
    bearer_token_env: str | None = Field(None, description="Environment variable holding a bearer token.")
    cwd: str | None = Field(None, description="Working directory for the stdio command.")
    models: list[ModelSpec] = Field(default_factory=list)
    tools: dict[Capability, MCPToolMapping] = Field(
        default_factory=dict,
        description="Capability -> downstream tool. Empty: use tools named chat/embed/rerank (a downstream gateway).",
    )
    open_timeout_s: float = Field(20.0, gt=0, description="Longest wait for the downstream to start and answer.")
    tools_ttl_s: float = Field(
        300.0, ge=0, description="How long a tool list stays fresh when the server sends no `ttlMs` hint."
    )

    @model_validator(mode="after")
    def _one_transport(self) -> MCPManifest:
        if (self.command is None) == (self.url is None):
            raise ValueError("set exactly one of `command` (stdio) or `url` (Streamable HTTP)")
        if self.command is not None and not self.command:
            raise ValueError("`command` needs at least the program to run")
        for capability, mapping in self.tools.items():
            unknown = set(mapping.arguments.values()) - MCP_GATEWAY_FIELDS[capability]
            if unknown:
                known = ", ".join(sorted(MCP_GATEWAY_FIELDS[capability]))
                raise ValueError(f"tools.{capability}: unknown gateway field(s) {sorted(unknown)}; known: {known}")
        return self


AdapterManifest = Annotated[
    OllamaManifest | OpenAIManifest | MLXManifest | MCPManifest,
    Field(discriminator="kind"),
]
ADAPTER_MANIFEST: TypeAdapter[AdapterManifest] = TypeAdapter(AdapterManifest)
