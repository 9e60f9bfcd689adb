"""One batch of the numpy encoder on both cores: each half of the batch through the model in its own thread.

OpenBLAS splits each product of a batch over the two cores, but everything between the products (GELU, the
attention over many small heads, layer norms: ~40% of a 32-text batch) ran on the calling thread alone. Here a
batch of at least SPLIT_FROM tokens is cut in two between its rows: a worker thread runs one half through a
twin of the model (the same weights, its own buffers and scratch) while the calling thread runs the other, and
OpenBLAS is held to the calling thread meanwhile, so each half's products run on its own core and no pool
worker spins beside them. numpy's loops and the CBLAS calls release the GIL; the halves' rows are independent
(attention stays within a row), so each row comes out as it does from the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager

import numpy as np

from adapters.numpy_bert import NumpyBert

# Smaller batches gained nothing from the second core here (16 texts of 13 tokens: 208 tokens).
SPLIT_FROM = 256
# The worker's half is as much work as the caller's: this only bounds the wait should the worker be stuck.
HALF_DEADLINE_S = 600.0

Rows = Callable[[NumpyBert, np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # model, ids, type ids, mask


class Halves:
    """A model, its twin and the worker thread that runs the twin; close() stops the worker."""

    def __init__(self, model: NumpyBert, one_thread: Callable[[], AbstractContextManager[None]]) -> None:
        self._model, self._twin = model, model.twin()
        self._one_thread = one_thread
        # Started by the first split batch; an encoder that never splits one has no thread.
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="encoder-half")
        self._closed = False

    def splits(self, ids: np.ndarray) -> bool:
        """Whether a batch of these token ids goes through in halves (never once closed)."""
        return not self._closed and len(ids) >= 2 and ids.size >= SPLIT_FROM

    def __call__(self, rows: Rows, ids: np.ndarray, type_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """rows(model, ...) of the whole batch: its first half here, the second on the worker."""
        half = (len(ids) + 1) // 2
        with self._one_thread():
            other = self._worker.submit(rows, self._twin, ids[half:], type_ids[half:], mask[half:])
            try:
                first = rows(self._model, ids[:half], type_ids[:half], mask[:half])
            finally:
                # Even when this half failed: the worker reads the batch and runs under the held pool.
                second = other.result(timeout=HALF_DEADLINE_S)
        return np.concatenate([first, second])

    def close(self) -> None:
        """Stop the worker thread (after the batch it may be running); later batches run whole."""
        self._closed = True
        self._worker.shutdown(wait=True)
