"""Float32 matrix products through the CBLAS interface of one BLAS library, for numpy forward passes.

The numpy decoder (adapters/numpy_llama.py) sends every product to the OpenBLAS loaded in front of MLX
(adapters/_blas.py): one library, one thread pool in the process. OpenBLAS 0.3.21 packs the whole matrix
for a one-row sgemm, so one-row products go to sgemv (see adapters/mlx_gemv.py for the measurements).
Without such a library, numpy's own matmul computes them.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Protocol

import numpy as np

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


class Products(Protocol):
    name: str

    def linear(self, a: np.ndarray, w: np.ndarray, out: np.ndarray, beta: float) -> None:
        """out <- a @ w.T + beta * out; a (m, k), w (n, k) as a linear layer stores it, out (m, n)."""

    def matmul(self, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
        """out <- a @ b; a (m, k), b (k, n), out (m, n)."""


def _leading(array: np.ndarray, rows: int, cols: int) -> int:
    """The row stride of a float32 matrix BLAS can read in place, in elements; ValueError otherwise."""
    if array.dtype != np.float32 or array.shape != (rows, cols):
        raise ValueError(f"expected a float32 ({rows}, {cols}) matrix, got {array.dtype} {array.shape}")
    if array.strides[1] != 4 or array.strides[0] % 4 or array.strides[0] < 4 * cols:
        raise ValueError(f"matrix strides {array.strides} are not BLAS row-major")
    return array.strides[0] // 4


class NumpyProducts:
    name = "numpy"

    def linear(self, a: np.ndarray, w: np.ndarray, out: np.ndarray, beta: float) -> None:
        if beta == 0.0:
            np.matmul(a, w.T, out=out)
        else:
            out += a @ w.T

    def matmul(self, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
        np.matmul(a, b, out=out)


class CblasProducts:
    """Products by cblas_sgemm / cblas_sgemv of an already loaded library (dlopen returns its handle)."""

    def __init__(self, library: Path) -> None:
        handle = ctypes.CDLL(str(library))
        ptr, i32, f32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
        self._sgemm = handle.cblas_sgemm
        self._sgemm.argtypes = [i32, i32, i32, i32, i32, i32, f32, ptr, i32, ptr, i32, f32, ptr, i32]
        self._sgemm.restype = None
        self._sgemv = handle.cblas_sgemv
        self._sgemv.argtypes = [i32, i32, i32, i32, f32, ptr, i32, ptr, i32, f32, ptr, i32]
        self._sgemv.restype = None
        self._get_threads = getattr(handle, "openblas_get_num_threads", None)
        self._set_threads = getattr(handle, "openblas_set_num_threads", None)
        if self._get_threads is not None and self._set_threads is not None:
            self._get_threads.restype, self._set_threads.argtypes = i32, [i32]
        self.name = f"OpenBLAS ({library.name})"
        # The library's own words where it has them (e.g. "OpenBLAS 0.3.21"), for health.
        self.library_name = "OpenBLAS"
        config = getattr(handle, "openblas_get_config", None)
        if config is not None:
            config.restype = ctypes.c_char_p
            self.library_name = " ".join(bytes(config()).decode(errors="replace").split()[:2])

    def one_thread(self) -> AbstractContextManager[None]:
        """Products on their calling thread alone while the block runs (two threads may then each run one).

        The library's thread count is the process's: only the thread that runs every product may hold it."""
        if self._get_threads is None or self._set_threads is None:
            return nullcontext()
        return _threads_held(self._get_threads, self._set_threads)

    def linear(self, a: np.ndarray, w: np.ndarray, out: np.ndarray, beta: float) -> None:
        m, k = a.shape
        n = w.shape[0]
        lda, ldw, ldo = _leading(a, m, k), _leading(w, n, k), _leading(out, m, n)
        if m == 1:
            x, y = a.ctypes.data, out.ctypes.data
            self._sgemv(_ROW_MAJOR, _NO_TRANS, n, k, 1.0, w.ctypes.data, ldw, x, 1, beta, y, 1)
            return
        self._sgemm(
            _ROW_MAJOR,
            _NO_TRANS,
            _TRANS,
            m,
            n,
            k,
            1.0,
            a.ctypes.data,
            lda,
            w.ctypes.data,
            ldw,
            beta,
            out.ctypes.data,
            ldo,
        )

    def matmul(self, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
        m, k = a.shape
        n = b.shape[1]
        lda, ldb, ldo = _leading(a, m, k), _leading(b, k, n), _leading(out, m, n)
        if m == 1:
            # out row = b.T @ a row: b (k, n) read transposed
            x, y = a.ctypes.data, out.ctypes.data
            self._sgemv(_ROW_MAJOR, _TRANS, k, n, 1.0, b.ctypes.data, ldb, x, 1, 0.0, y, 1)
            return
        self._sgemm(
            _ROW_MAJOR,
            _NO_TRANS,
            _NO_TRANS,
            m,
            n,
            k,
            1.0,
            a.ctypes.data,
            lda,
            b.ctypes.data,
            ldb,
            0.0,
            out.ctypes.data,
            ldo,
        )


@contextmanager
def _threads_held(get: Callable[[], int], set_: Callable[[int], object]) -> Iterator[None]:
    before = int(get())
    set_(1)
    try:
        yield
    finally:
        set_(before)


def products_for(library: Path | None) -> Products:
    """CBLAS products of `library` when it has them, numpy's otherwise."""
    if library is None:
        return NumpyProducts()
    try:
        return CblasProducts(library)
    except (OSError, AttributeError):
        return NumpyProducts()
