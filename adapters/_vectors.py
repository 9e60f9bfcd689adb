"""Vectors checked before they leave an adapter: shape, finiteness and the model's dimensions.

Which width is right for a model: the width the caller asked for (`dimensions`),
else the manifest's pinned `dimensions` for that model, else the width of the
first answer the model gave (kept for the adapter's lifetime, so an upstream
that changes it is noticed). Every width is also held to `max_dimensions`.
A violation is a retryable UpstreamProtocolError naming the vector and the limit:
the next candidate may serve the call correctly.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from adapters.errors import UpstreamProtocolError

MAX_DIMENSIONS = 65_536
# Widths learned from answers: one per model name, oldest forgotten first.
_LEARNED_CAP = 1024
_NUMBER_TYPES = frozenset({float, int})


def float_rows(rows: object, expected: int, first: int, what: str) -> list[list[float]]:
    """`rows` as a list of `expected` non-empty lists of finite floats (ints widened), or a protocol error.

    `first` is the caller's input index of the first row, so messages name the caller's input.
    """
    if not isinstance(rows, list):
        raise UpstreamProtocolError(f"{what}: upstream answer has no list of vectors")
    if len(rows) != expected:
        raise UpstreamProtocolError(f"{what}: upstream returned {len(rows)} vectors for {expected} inputs")
    for i, row in enumerate(rows):
        kinds = set(map(type, row)) if isinstance(row, list) else None
        # A finite sum proves every element finite in one C-speed pass (bools are excluded by type).
        if not kinds or not kinds <= _NUMBER_TYPES or not math.isfinite(sum(row)):
            raise UpstreamProtocolError(f"{what}: vector {first + i} is not a non-empty list of finite numbers")
        if int in kinds:
            rows[i] = [float(x) for x in row]
    return rows


class VectorBounds:
    """The widths an adapter's models answer with; one per adapter, shared by every call."""

    def __init__(
        self,
        pinned: Mapping[str, int],
        canonical: Callable[[str], str],
        max_dimensions: int = MAX_DIMENSIONS,
    ) -> None:
        self._canonical = canonical
        self._pinned = {canonical(name): width for name, width in pinned.items()}
        self._learned: OrderedDict[str, int] = OrderedDict()
        self.max_dimensions = max_dimensions

    def expected(self, model: str, requested: int | None) -> int | None:
        """The width an answer for `model` must have, when it is known before the answer."""
        if requested is not None:
            return requested
        key = self._canonical(model)
        return self._pinned.get(key) or self._learned.get(key)

    def check(self, model: str, requested: int | None, vectors: Sequence[Sequence[Any]], what: str) -> None:
        """Every vector has the expected width and at most `max_dimensions`; the first answer fixes the width."""
        if not vectors:
            return
        expected = self.expected(model, requested)
        width = expected or len(vectors[0])
        for i, vector in enumerate(vectors):
            if len(vector) > self.max_dimensions:
                raise UpstreamProtocolError(
                    f"{what}: vector {i} has {len(vector)} dimensions; the limit is {self.max_dimensions}"
                )
            if len(vector) != width:
                source = _source(requested, expected, self._pinned.get(self._canonical(model)))
                raise UpstreamProtocolError(
                    f"{what}: vector {i} has {len(vector)} dimensions, expected {width}{source}"
                )
        if expected is None:
            self._learn(self._canonical(model), width)

    def _learn(self, key: str, width: int) -> None:
        self._learned[key] = width
        self._learned.move_to_end(key)
        while len(self._learned) > _LEARNED_CAP:
            self._learned.popitem(last=False)


def _source(requested: int | None, expected: int | None, pinned: int | None) -> str:
    if expected is None:
        return ""
    if requested is not None:
        return " (the dimensions asked for)"
    if pinned is not None:
        return " (pinned in the adapter manifest)"
    return " (the model's earlier answers)"
