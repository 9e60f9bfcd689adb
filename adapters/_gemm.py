"""Matrix products for the encoders' numpy forward pass (adapters/numpy_bert.py), in one BLAS thread pool.

OpenBLAS keeps a worker spinning ~0.1 s after each product; with numpy's bundled OpenBLAS beside the one
MLX uses, a chat's prompt chunk and an embed served one after the other on the owner thread each found the
other pool's worker spinning on one of the two cores. So where OpenBLAS is in front of MLX
(adapters/_blas.py) the products go to it through its CBLAS interface, and numpy's own BLAS, left with the
attention's small per-head products, is held to one thread.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager

import numpy as np

from adapters._blas import loaded_openblas
from adapters._cblas import CblasProducts, NumpyProducts, products_for


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
numpy_gemm: Gemm = NumpyProducts().linear


def encoder_gemm() -> tuple[Gemm, str]:
    """The products for the encoders' numpy forward pass, and what they run on (for health)."""
    lib = loaded_openblas()
    products = products_for(lib)
    if lib is None or not isinstance(products, CblasProducts):
        return numpy_gemm, numpy_blas()
    hold_numpy_blas()
    return products.linear, f"{products.library_name} ({lib.name})"


def encoder_one_thread() -> Callable[[], AbstractContextManager[None]] | None:
    """Where the encoders' products can be held to their calling thread (OpenBLAS's CBLAS), what holds them."""
    products = products_for(loaded_openblas())
    return products.one_thread if isinstance(products, CblasProducts) else None


def hold_numpy_blas() -> None:
    """Numpy's own BLAS to one thread (the small attention products that stay in numpy need no pool)."""
    from threadpoolctl import ThreadpoolController

    ours = {os.path.realpath(p) for p in (loaded_openblas(),) if p is not None}
    controller = ThreadpoolController()
    for lib in controller.lib_controllers:
        if lib.user_api == "blas" and os.path.realpath(lib.filepath) not in ours:
            lib.set_num_threads(1)
