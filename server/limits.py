"""Request limits: one source (`limits` in performance-config) for the published schemas and the runtime checks.

A tool parameter names the limit that bounds it with a `Limit` marker in its
annotation; `bind_limits()` turns the tool function into one whose signature
carries the configured numbers, so the input schema a client sees (maxItems,
maxLength, maximum, and the numbers in descriptions, written `{max_texts}`)
and the validation the SDK runs both come from Settings. `check()` enforces
what a schema cannot say (totals across fields) with the same numbers, before
any expensive work.
"""

from __future__ import annotations

import copy
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

import annotated_types
from pydantic import BaseModel, create_model
from pydantic.fields import FieldInfo

from server.errors import LimitError
from server.manifests import RequestLimits

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class Limit:
    """Bound a parameter by `limits.<field>`: `max_length` for strings and lists, `le` for numbers."""

    field: str
    bound: Literal["max_length", "le"] = "max_length"


@dataclass(frozen=True, slots=True)
class Size:
    """How big a call is, in the units limits, policy and rate limits speak."""

    texts: int = 0
    chars: int = 0
    documents: int = 0
    messages: int = 0
    max_tokens: int = 0

    def units(self) -> dict[str, int]:
        """Rate-limit units: texts (documents count as texts), chars, max_tokens."""
        return {"texts": self.texts + self.documents, "chars": self.chars, "max_tokens": self.max_tokens}


def check(limits: RequestLimits, size: Size) -> None:
    """Raise LimitError naming the limit a call exceeds (the counts repeat the schema's, for callers without it)."""
    if size.texts > limits.max_texts:
        raise LimitError(f"too many texts: {size.texts} > limit {limits.max_texts}; split the request")
    if size.documents > limits.max_documents:
        raise LimitError(f"too many documents: {size.documents} > limit {limits.max_documents}")
    if size.messages > limits.max_messages:
        raise LimitError(f"too many messages: {size.messages} > limit {limits.max_messages}")
    if size.chars > limits.max_total_chars:
        raise LimitError(f"request too large: {size.chars} characters > limit {limits.max_total_chars}")
    if size.max_tokens > limits.max_tokens:
        raise LimitError(f"max_tokens {size.max_tokens} > limit {limits.max_tokens}")


def bind_limits(fn: F, limits: RequestLimits) -> F:
    """A copy of `fn` whose annotations carry the configured limits in place of `Limit` markers."""
    resolver = _Resolver(limits)
    hints = typing.get_type_hints(fn, include_extras=True)
    bound = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    bound.__kwdefaults__ = fn.__kwdefaults__
    bound.__doc__, bound.__module__, bound.__qualname__ = fn.__doc__, fn.__module__, fn.__qualname__
    bound.__annotations__ = {name: hint if name == "return" else resolver.resolve(hint) for name, hint in hints.items()}
    return typing.cast(F, bound)


def _marked(model: type[BaseModel]) -> bool:
    """Whether a model's own fields name a limit (nested models are not resolved)."""
    return any(isinstance(m, Limit) for info in model.model_fields.values() for m in info.metadata)


class _Resolver:
    def __init__(self, limits: RequestLimits) -> None:
        self.limits = limits
        self.values = limits.model_dump()
        self._models: dict[type[BaseModel], type[BaseModel]] = {}

    def resolve(self, tp: Any) -> Any:
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is Annotated:
            return Annotated[(self.resolve(args[0]), *(self.resolve_meta(m) for m in tp.__metadata__))]
        if origin in (typing.Union, types.UnionType):
            return typing.Union[tuple(self.resolve(a) for a in args)]  # noqa: UP007 - built from a tuple
        if origin is list:
            return list[self.resolve(args[0])]  # type: ignore[misc]
        if isinstance(tp, type) and issubclass(tp, BaseModel) and _marked(tp):
            return self.resolve_model(tp)
        return tp

    def resolve_meta(self, item: Any) -> Any:
        if isinstance(item, Limit):
            value = self.values[item.field]
            return annotated_types.MaxLen(value) if item.bound == "max_length" else annotated_types.Le(value)
        if isinstance(item, FieldInfo) and item.description and "{" in item.description:
            return FieldInfo.merge_field_infos(item, description=item.description.format(**self.values))
        return item

    def resolve_model(self, tp: type[BaseModel]) -> type[BaseModel]:
        """The same model with its fields' limits resolved (built once per model)."""
        if tp not in self._models:
            fields: dict[str, Any] = {}
            for name, info in tp.model_fields.items():
                bound = copy.copy(info)
                bound.metadata = [self.resolve_meta(m) for m in info.metadata]
                fields[name] = (info.annotation, bound)
            self._models[tp] = create_model(tp.__name__, __base__=tp, __module__=tp.__module__, **fields)
        return self._models[tp]
