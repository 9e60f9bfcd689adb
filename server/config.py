"""The reader of the environment and of config files.

(Before it is imported, the stdio fast start reads MODEL_GATEWAY_FAST_START,
MODEL_GATEWAY_MAX_LINE_BYTES and the directories of `server.paths`, and fingerprints
the MODEL_GATEWAY_* values; `serve` passes the environment to the stdio session for
MODEL_GATEWAY_MAX_LINE_BYTES and MODEL_GATEWAY_LOOP_WATCH, and MODEL_GATEWAY_LOOP_WATCH to the HTTP app.)

`load_settings()` turns CLI options, environment variables and manifests into
one frozen `Settings`, passed explicitly to everything else. Secrets named by
manifests (`api_key_env`, `bearer_token_env`) are resolved here and held as
`SecretStr`.

Environment variables (all optional):
  MODEL_GATEWAY_MANIFESTS    user manifests dir (default ~/.config/model-gateway/manifests if present)
  MODEL_GATEWAY_CACHE_DIR    discovery cache and tool caches (default $XDG_CACHE_HOME/model-gateway)
  MODEL_GATEWAY_MODELS_DIR   installed model packs (default <cache dir>/models)
  MODEL_GATEWAY_STATE_DIR    audit log and keys (default $XDG_STATE_HOME/model-gateway)
  MODEL_GATEWAY_AUDIT_KEY    audit HMAC key (hex); otherwise a key file
  MODEL_GATEWAY_AUDIT_KEY_FILE  audit key file (default <state dir>/audit/audit.key, generated on first run)
  MODEL_GATEWAY_AUTH_TOKEN   bearer token required on HTTP transports (its subject: MODEL_GATEWAY_AUTH_SUBJECT)
  MODEL_GATEWAY_AUTH_TOKENS_FILE  JSON {"tokens": [{"sha256", "subject"}]}: several tokens, one subject each
  MODEL_GATEWAY_PRIVACY_MODE "1" routes to local adapters only
  MODEL_GATEWAY_LOG_LEVEL    DEBUG | INFO | WARNING | ERROR
  MODEL_GATEWAY_FAST_START   "0": stdio answers the handshake only once the server is ready
  MODEL_GATEWAY_MAX_LINE_BYTES  stdio line cap (overrides limits.max_line_bytes)
  MODEL_GATEWAY_LOOP_WATCH   "1": measure event-loop blocks, report the longest on stderr at exit
  MODEL_GATEWAY_SHARED_STATE redis://HOST:PORT/DB: rate limits and the response cache shared by replicas
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import SecretStr

from adapters.base import AdapterContext, AdapterLimits
from adapters.manifest import MCPManifest, OpenAIManifest
from server.errors import ConfigError
from server.manifests import Manifests, load_manifests
from server.paths import default_cache_dir, default_models_dir, default_state_dir, user_manifests_dir
from server.principal import load_tokens_file, token_digest
from server.statefile import CacheFolder

Transport = Literal["stdio", "sse", "streamable-http"]
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(frozen=True)
class Settings:
    manifests: Manifests
    cache_dir: Path
    models_dir: Path
    state_dir: Path
    transport: Transport = "stdio"
    host: str = "127.0.0.1"
    port: int = 8765
    stateless: bool = False
    json_response: bool = True
    allowed_hosts: tuple[str, ...] = ()
    auth_token: SecretStr | None = None
    privacy_mode: bool = False
    log_level: str = "INFO"
    metrics_port: int | None = None
    principal: str = "local"
    audit_key: SecretStr | None = None
    audit_key_file: Path | None = None
    auth_subjects: Mapping[str, str] = field(default_factory=dict)  # sha256(token) -> principal
    secrets: Mapping[str, SecretStr] = field(default_factory=dict)
    use_discovery_cache: bool = True
    shared_state_url: SecretStr | None = None  # may carry a password: shown only through shared_state.display_url

    @property
    def audit_path(self) -> Path:
        return self.state_dir / "audit" / "audit.jsonl"

    @property
    def audit_key_path(self) -> Path:
        return self.audit_key_file or self.state_dir / "audit" / "audit.key"

    @property
    def snapshot_path(self) -> Path:
        return self.cache_dir / "discovery-snapshot.json"

    def adapter_context(self) -> AdapterContext:
        perf = self.manifests.performance
        limits = AdapterLimits(
            max_connections=perf.http.max_connections,
            max_keepalive_connections=perf.http.max_keepalive_connections,
            keepalive_expiry_s=perf.http.keepalive_expiry_s,
            connect_timeout_s=perf.http.connect_timeout_s,
            read_timeout_s=perf.http.read_timeout_s,
            probe_deadline_s=perf.discovery.probe_deadline_s,
            batch_limit=perf.batching.batch_limit,
            model_load_s=perf.deadlines.model_load_s,
        )
        return AdapterContext(
            limits=limits,
            cache_dir=self.cache_dir,
            models_dir=self.models_dir,
            secrets=self.secrets,
            cache=CacheFolder(self.cache_dir, "model_gateway.adapters"),
        )


def _secret_names(manifests: Manifests) -> set[str]:
    names = set()
    for a in manifests.adapters:
        if isinstance(a, OpenAIManifest) and a.api_key_env:
            names.add(a.api_key_env)
        if isinstance(a, MCPManifest) and a.bearer_token_env:
            names.add(a.bearer_token_env)
    if manifests.performance.shared_state.password_env:
        names.add(manifests.performance.shared_state.password_env)
    return names


SHARED_STATE_ENV = "MODEL_GATEWAY_SHARED_STATE"
_DB_PATH = re.compile(r"^/?\d{0,5}$")


def _shared_state_url(env: Mapping[str, str], manifests: Manifests) -> SecretStr | None:
    """The Redis URL from the environment or performance-config, checked; errors never echo it (passwords)."""
    from_env = env.get(SHARED_STATE_ENV, "").strip()
    url = from_env or (manifests.performance.shared_state.url or "").strip()
    if not url:
        return None
    where = SHARED_STATE_ENV if from_env else "performance-config.json shared_state.url"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{where}: not a valid URL ({exc}); expected redis://HOST:PORT/DB") from exc
    if parts.scheme not in {"redis", "rediss", "unix"}:
        raise ConfigError(
            f"{where}: scheme {parts.scheme!r} is not redis, rediss or unix; expected redis://HOST:PORT/DB"
        )
    if parts.scheme != "unix" and (not parts.hostname or not _DB_PATH.match(parts.path)):
        raise ConfigError(f"{where}: needs a host and at most a database number; expected redis://HOST:PORT/DB")
    if parts.scheme == "unix" and not parts.path:
        raise ConfigError(f"{where}: needs a socket path; expected unix:///path/to/redis.sock?db=N")
    if port == 0:
        raise ConfigError(f"{where}: port 0 is not a Redis port")
    return SecretStr(url)


def _privacy_mode(env: Mapping[str, str]) -> bool:
    return _truthy(env.get("MODEL_GATEWAY_PRIVACY_MODE"))


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _auth_subjects(env: Mapping[str, str], token: SecretStr | None) -> dict[str, str]:
    subjects = (
        load_tokens_file(Path(env["MODEL_GATEWAY_AUTH_TOKENS_FILE"]))
        if env.get("MODEL_GATEWAY_AUTH_TOKENS_FILE")
        else {}
    )
    if token is not None:
        subjects[token_digest(token.get_secret_value())] = env.get("MODEL_GATEWAY_AUTH_SUBJECT") or "bearer"
    return subjects


def check_bind(host: str, allowed_hosts: tuple[str, ...], authenticated: bool) -> None:
    """Binding beyond loopback needs explicit allowed hosts AND bearer-token authentication."""
    if host in LOOPBACK_HOSTS:
        return
    missing = []
    if not allowed_hosts:
        missing.append("--allowed-host HOST[:PORT] (repeatable)")
    if not authenticated:
        missing.append("MODEL_GATEWAY_AUTH_TOKEN (a bearer token clients must send)")
    if missing:
        raise ConfigError(f"refusing to bind {host}: a non-loopback address requires " + " and ".join(missing))


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """How `serve` was asked to listen: its CLI options (`privacy_mode` None defers to the environment)."""

    transport: Transport = "stdio"
    host: str = "127.0.0.1"
    port: int = 8765
    stateless: bool = False
    allowed_hosts: tuple[str, ...] = ()
    privacy_mode: bool | None = None
    metrics_port: int | None = None


def load_settings(
    *, manifests_dir: Path | None = None, serve: ServeOptions | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    serve = serve or ServeOptions()
    env = os.environ if env is None else env
    manifests = load_manifests(user_manifests_dir(manifests_dir, env))
    token = SecretStr(env["MODEL_GATEWAY_AUTH_TOKEN"]) if env.get("MODEL_GATEWAY_AUTH_TOKEN") else None
    subjects = _auth_subjects(env, token)
    if serve.transport != "stdio":
        check_bind(serve.host, serve.allowed_hosts, authenticated=bool(subjects))
    secrets = {name: SecretStr(env[name]) for name in _secret_names(manifests) if env.get(name)}
    shared_state_url = _shared_state_url(env, manifests)
    url_password = urlsplit(shared_state_url.get_secret_value()).password if shared_state_url else None
    if url_password:
        secrets[SHARED_STATE_ENV] = SecretStr(url_password)  # so the redactor masks it too
    level = env.get("MODEL_GATEWAY_LOG_LEVEL", "INFO").upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError(f"MODEL_GATEWAY_LOG_LEVEL={level!r}: use DEBUG, INFO, WARNING or ERROR")
    return Settings(
        manifests=manifests,
        cache_dir=default_cache_dir(env),
        models_dir=default_models_dir(env),
        state_dir=default_state_dir(env),
        transport=serve.transport,
        host=serve.host,
        port=serve.port,
        stateless=serve.stateless,
        allowed_hosts=serve.allowed_hosts,
        auth_token=token,
        privacy_mode=_privacy_mode(env) if serve.privacy_mode is None else serve.privacy_mode,
        log_level=level,
        metrics_port=serve.metrics_port,
        principal=env.get("USER") or env.get("LOGNAME") or "local",
        audit_key=SecretStr(env["MODEL_GATEWAY_AUDIT_KEY"]) if env.get("MODEL_GATEWAY_AUDIT_KEY") else None,
        audit_key_file=Path(env["MODEL_GATEWAY_AUDIT_KEY_FILE"]) if env.get("MODEL_GATEWAY_AUDIT_KEY_FILE") else None,
        auth_subjects=subjects,
        secrets=secrets,
        shared_state_url=shared_state_url,
    )
