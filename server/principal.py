"""Who is calling: the local user on stdio, the authenticated token's subject on HTTP.

The HTTP auth layer (`BearerAuth` in server/http_edge.py) maps the bearer token to a
subject and leaves it in the ASGI scope; a tool call reads it from the request
it arrived on (`principal_of()`) and carries it as part of the call. Tokens are
kept only as sha256 digests.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from server.errors import ConfigError

SCOPE_KEY = "model_gateway.principal"


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 (hex) of the bearer token.")
    subject: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9@._:-]+$")


class TokensFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    tokens: list[TokenEntry] = Field(min_length=1)


def load_tokens_file(path: Path) -> dict[str, str]:
    """sha256(token) -> subject, from a JSON file `{"tokens": [{"sha256": ..., "subject": ...}]}`."""
    try:
        parsed = TokensFile.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the auth tokens file ({exc.strerror})") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(root)"
        raise ConfigError(f"{path}: {field}: {err['msg']}") from exc
    return {t.sha256: t.subject for t in parsed.tokens}


def principal_of(request: object | None, default: str) -> str:
    """The authenticated subject of an HTTP request (as BearerAuth left it), else `default` (the local user)."""
    scope: Mapping[str, Any] | None = getattr(request, "scope", None)
    subject = scope_principal(scope) if scope is not None else None
    return default if subject is None else subject


def scope_principal(scope: Mapping[str, Any]) -> str | None:
    """The subject BearerAuth left in an ASGI scope (None when the server requires no token)."""
    subject = scope.get(SCOPE_KEY)
    return subject if isinstance(subject, str) else None
