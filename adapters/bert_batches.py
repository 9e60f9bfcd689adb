"""Tokenised BERT inputs grouped into forward passes and padded to each pass's longest input."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class Batch:
    ids: np.ndarray
    type_ids: np.ndarray
    mask: np.ndarray
    tokens: int
    truncated: int


def pad(encodings: Sequence[Any], pad_id: int) -> Batch:
    width = max(len(e.ids) for e in encodings)
    ids = np.full((len(encodings), width), pad_id, dtype=np.int32)
    type_ids = np.zeros((len(encodings), width), dtype=np.int32)
    mask = np.zeros((len(encodings), width), dtype=np.int32)
    for row, enc in enumerate(encodings):
        n = len(enc.ids)
        ids[row, :n], type_ids[row, :n], mask[row, :n] = enc.ids, enc.type_ids, 1
    truncated = sum(1 for e in encodings if e.overflowing)
    return Batch(ids, type_ids, mask, int(mask.sum()), truncated)


_PAD_SLACK = 64  # padding a chunk may carry for free: below this, one more pass costs more than it saves


def chunks(lengths: Sequence[int], token_budget: int, batch_limit: int) -> list[list[int]]:
    """Group input indices, shortest first, so each chunk stays under the token budget and mostly unpadded.

    A chunk also closes when the next (longer) input would make more than half of it padding: one
    256-token text padded into a batch of 8-token texts would otherwise multiply the work of all of them.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    chunks: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in order:
        # Sorted ascending, so the newest member is the chunk's longest and sets its padded width.
        padded = (len(current) + 1) * lengths[i]
        full = len(current) >= batch_limit or padded > token_budget
        if current and (full or padded > 2 * (real + lengths[i]) + _PAD_SLACK):
            chunks.append(current)
            current, real = [], 0
        current.append(i)
        real += lengths[i]
    if current:
        chunks.append(current)
    return chunks
