"""Keeps secrets out of audit records and logs.

Known secret values (API keys named by manifests, bearer tokens, the audit key)
are replaced wherever they appear; so are strings shaped like credentials
(`sk-...`, `Bearer ...`, `api_key=...`), whose values the gateway never knows.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

MASK = "[redacted]"
_SHAPES = (
    re.compile(r"\b(?:sk|pk|rk|ghp|gho|xox[abp])[-_][A-Za-z0-9_-]{8,}"),
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(
        r"(?i)\b(api[_-]?key|access[_-]?token|token|secret|password|authorization)([\"']?\s*[=:]\s*[\"']?)[^\s\"',;&]{6,}"
    ),
)

# one pass for the common "nothing to mask" answer; (?i) is scoped per branch. Each word is one a shape
# cannot match without (`api[_-]?key`, not `api`: every start record names its `capability`)
_SHAPE_WORDS = (
    "sk-",
    "sk_",
    "pk-",
    "pk_",
    "rk-",
    "rk_",
    "ghp",
    "gho",
    "xox",
    "bearer",
    "apikey",
    "api_key",
    "api-key",
    "token",
    "secret",
    "password",
    "authorization",
)
_ANY_SHAPE = re.compile(
    "|".join(
        f"(?{'i' if shape.flags & re.IGNORECASE else ''}:{shape.pattern.removeprefix('(?i)')})" for shape in _SHAPES
    )
)


# Strings `needs()` remembers the answer for: the short ones records repeat (tool, principal, model and
# adapter names, outcomes), at most KNOWN_CAP of them; a full table starts over.
KNOWN_CAP = 4096
KNOWN_MAX_CHARS = 256
_HEX = "0123456789abcdef"
_SCALARS = (int, float, bool)


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # longest first, so a secret that contains another is masked whole
        self._secrets = sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)
        self._known: dict[str, bool] = {}

    def text(self, value: str) -> str:
        for secret in self._secrets:
            if secret in value:
                value = value.replace(secret, MASK)
        for shape in _SHAPES:
            value = shape.sub(_mask_match, value)
        return value

    def found_in(self, text: str) -> bool:
        """Whether `text` holds anything `text()` would mask; cheap when it holds nothing of the kind."""
        if any(s in text for s in self._secrets):
            return True
        low = text.lower()
        # every shape contains one of these words; usage counters ("input_tokens") are not a token
        hits = [w for w in _SHAPE_WORDS if w in low]
        if hits == ["token"] and low.count("token") == low.count("_tokens"):
            return False
        return bool(hits) and _ANY_SHAPE.search(text) is not None

    def needs(self, value: Any) -> bool:
        """Whether `value()` would change any string in this JSON-like value.

        Only strings are ever masked (keys and numbers stay), so each string is checked on its own:
        a short one once (remembered), lowercase hex (call ids, digests: never repeated) only for known
        secrets, since every credential shape needs a letter past `f`. An audit record's scan costs a few
        microseconds instead of ~9 for its whole JSON text.
        """
        if isinstance(value, str):
            return self._string_needs(value)
        if isinstance(value, dict):
            value = value.values()
        elif not isinstance(value, list | tuple):
            return False
        known = self._known
        for item in value:  # the flat case inline: a record is mostly strings, numbers and None
            if item is None or item.__class__ in _SCALARS:
                continue
            if item.__class__ is str:
                found = known.get(item)
                if found is False:
                    continue
                if found or self._string_needs(item):
                    return True
            elif self.needs(item):
                return True
        return False

    def _string_needs(self, text: str) -> bool:
        known = self._known.get(text)
        if known is not None:
            return known
        if not text.strip(_HEX):
            return any(s in text for s in self._secrets)
        found = self.found_in(text)
        if len(text) <= KNOWN_MAX_CHARS:
            if len(self._known) >= KNOWN_CAP:
                self._known.clear()
            self._known[text] = found
        return found

    def value(self, value: Any) -> Any:
        """A copy of a JSON-like value with every string redacted."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value


def _mask_match(m: re.Match[str]) -> str:
    if m.lastindex == 2:  # key=value: keep the key, so the log still says what was there
        return f"{m.group(1)}{m.group(2)}{MASK}"
    return MASK


class RedactingFilter(logging.Filter):
    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = self.redactor.text(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            text = self.redactor.text(str(exc))
            if text != str(exc):
                record.exc_info, record.exc_text = None, None
                record.msg = f"{record.msg} ({type(exc).__name__}: {text})"
        return True


@contextmanager
def redacted_logs(redactor: Redactor) -> Iterator[None]:
    """While the gateway runs, every handler on the root logger drops secrets from what it writes."""
    handlers = list(logging.getLogger().handlers)
    filt = RedactingFilter(redactor)
    for h in handlers:
        h.addFilter(filt)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(filt)
