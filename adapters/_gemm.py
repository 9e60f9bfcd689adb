"""Matrix products for the encoders' numpy forward pass (adapters/numpy_bert.py), in one BLAS thread pool.

OpenBLAS keeps a worker spinning ~0.1 s after each product; with numpy's bundled OpenBLAS beside the one
MLX uses, a chat's prompt chunk and an embed served one after the other on the owner thread each found the
other pool's worker spinning on one of the two cores. So where OpenBLAS is in front of MLX
(adapters/_blas.py) the products go to it through its CBLAS interface, and numpy's own BLAS, left with the
attention's small per-head products, is held to one thread.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from adapters._blas import loaded_openblas


def numpy_blas() -> str:
    """The BLAS numpy was built with, as health names it (e.g. "numpy's scipy-openblas 0.3.31")."""
    try:
        config = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
        return f"numpy's {blas['name']} {blas['version']}"
    except (KeyError, TypeError, ValueError):
        return "numpy's BLAS"



# out <- a @ w.T + beta * out, float32: a (m, k), w (n, k) as a linear layer stores it, out (m, n).
Gemm = Callable[[np.ndarray, np.ndarray, np.ndarray, float], None]
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


def numpy_gemm(a: np.ndarray, w: np.ndarray, out: np.ndarray, beta: float) -> None:
    if beta == 0.0:
        np.matmul(a, w.T, out=out)
    else:
        out += a @ w.T


def _leading(array: np.ndarray, rows: int, cols: int) -> int:
    """The row stride of a float32 matrix BLAS can read in place, in elements; ValueError otherwise."""
    if array.dtype != np.float32 or array.shape != (rows, cols) or array.ndim != 2:
        raise ValueError(f"expected a float32 ({rows}, {cols}) matrix, got {array.dtype} {array.shape}")
    if array.strides[1] != 4 or array.strides[0] % 4 or array.strides[0] < 4 * cols:
        raise ValueError(f"matrix strides {array.strides} are not BLAS row-major")
    return array.strides[0] // 4


class CblasGemm:
    """Products in the OpenBLAS MLX uses, so the process keeps one BLAS thread pool (see hold_numpy_blas)."""

    def __init__(self, lib: Path) -> None:
        handle = ctypes.CDLL(str(lib))
        fn = handle.cblas_sgemm
        ptr, i, f = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
        fn.argtypes = [i, i, i, i, i, i, f, ptr, i, ptr, i, f, ptr, i]
        fn.restype = None
        self._sgemm = fn
        config = getattr(handle, "openblas_get_config", None)
        self.name = "OpenBLAS"
        if config is not None:
            config.restype = ctypes.c_char_p
            self.name = " ".join(bytes(config()).decode(errors="replace").split()[:2])

    def __call__(self, a: np.ndarray, w: np.ndarray, out: np.ndarray, beta: float) -> None:
        m, k = a.shape
        n = w.shape[0]
        lda, ldw, ldo = _leading(a, m, k), _leading(w, n, k), _leading(out, m, n)
        self._sgemm(
            _ROW_MAJOR, _NO_TRANS, _TRANS, m, n, k, 1.0, a.ctypes.data, lda, w.ctypes.data, ldw, beta,
            out.ctypes.data, ldo,
        )


def encoder_gemm() -> tuple[Gemm, str]:
    """The products for the encoders' numpy forward pass, and what they run on (for health)."""
    lib = loaded_openblas()
    if lib is None:
        return numpy_gemm, numpy_blas()
    try:
        gemm = CblasGemm(lib)
    except (OSError, AttributeError):
        return numpy_gemm, numpy_blas()
    hold_numpy_blas()
    return gemm, f"{gemm.name} ({lib.name})"


def hold_numpy_blas() -> None:
    """Numpy's own BLAS to one thread (the small attention products that stay in numpy need no pool)."""
    from threadpoolctl import ThreadpoolController

    ours = {os.path.realpath(p) for p in (loaded_openblas(),) if p is not None}
    controller = ThreadpoolController()
    for lib in controller.lib_controllers:
        if lib.user_api == "blas" and os.path.realpath(lib.filepath) not in ours:
            lib.set_num_threads(1)
