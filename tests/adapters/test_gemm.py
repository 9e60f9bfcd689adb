from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from adapters import _blas, _gemm
from adapters._cblas import CblasProducts

RNG = np.random.default_rng(5)


def _openblas() -> _gemm.Gemm:
    lib = _blas.find_openblas()
    if lib is None:
        pytest.skip(f"OpenBLAS is not installed (apt-get install {_blas.APT_PACKAGE})")
    return CblasProducts(lib).linear


@pytest.mark.parametrize("gemm", ["numpy", "openblas"])
def test_a_product_adds_to_its_output_as_beta_says(gemm: str) -> None:
    fn = _gemm.numpy_gemm if gemm == "numpy" else _openblas()
    a = RNG.standard_normal((13, 24)).astype(np.float32)
    w = RNG.standard_normal((7, 24)).astype(np.float32)  # (out, in), as a linear layer stores it
    out = np.full((13, 7), 5.0, dtype=np.float32)
    fn(a, w, out, 0.0)
    assert np.allclose(out, a @ w.T, atol=1e-5)
    fn(a, w, out, 1.0)
    assert np.allclose(out, 2 * (a @ w.T), atol=1e-5)


def test_openblas_products_read_row_slices_in_place() -> None:
    gemm = _openblas()
    wide = RNG.standard_normal((9, 40)).astype(np.float32)
    a, w = wide[:, 8:32], RNG.standard_normal((40, 24)).astype(np.float32)[::2]  # strided rows
    out = np.zeros((9, 30), dtype=np.float32)
    gemm(a, w, out[:, 5:25], 0.0)
    assert np.allclose(out[:, 5:25], a @ w.T, atol=1e-5)
    assert not out[:, :5].any() and not out[:, 25:].any()


@pytest.mark.parametrize(
    ("a", "w", "out", "problem"),
    [
        (np.ones((4, 3)), np.ones((2, 3), np.float32), np.ones((4, 2), np.float32), "float32"),
        (np.ones((3, 4), np.float32).T, np.ones((2, 3), np.float32), np.ones((4, 2), np.float32), "row-major"),
        (np.ones((4, 3), np.float32), np.ones((2, 5), np.float32), np.ones((4, 2), np.float32), r"\(2, 3\)"),
        (np.ones((4, 3), np.float32), np.ones((2, 3), np.float32), np.ones((4, 3), np.float32), r"\(4, 2\)"),
    ],
)
def test_openblas_refuses_matrices_it_cannot_read_before_calling_it(
    a: np.ndarray, w: np.ndarray, out: np.ndarray, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        _openblas()(a, w, out, 0.0)


POOLS = (
    "import json, os\n"
    "from adapters._blas import load_openblas\n"
    "load_openblas()\n"
    "import mlx.core\n"
    "from threadpoolctl import threadpool_info\n"
    "from adapters._gemm import encoder_gemm\n"
    "gemm, products = encoder_gemm()\n"
    "pools = [[os.path.realpath(p['filepath']), p['num_threads']] for p in threadpool_info()]\n"
    "print(json.dumps({'products': products, 'pools': pools}))\n"
)


def test_with_openblas_in_front_of_mlx_the_products_use_its_pool_and_numpys_blas_keeps_one_thread() -> None:
    lib = _blas.find_openblas()
    if lib is None:
        pytest.skip(f"OpenBLAS is not installed (apt-get install {_blas.APT_PACKAGE})")
    run = subprocess.run([sys.executable, "-c", POOLS], capture_output=True, text=True, timeout=120, check=True)
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["products"].startswith("OpenBLAS") and lib.name in report["products"]
    ours = str(lib.resolve())
    assert any(path == ours for path, _ in report["pools"])
    others = [threads for path, threads in report["pools"] if path != ours]
    assert others and all(threads == 1 for threads in others)


def test_numpys_blas_is_named_for_health() -> None:
    assert _gemm.numpy_blas().startswith("numpy's ")
