from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from adapters._blas import find_openblas
from adapters._cblas import CblasProducts, NumpyProducts, products_for


@pytest.fixture(scope="module")
def cblas() -> CblasProducts:
    library = find_openblas()
    if library is None:
        pytest.skip("no OpenBLAS installed")
    return CblasProducts(library)


@pytest.mark.parametrize("rows", [1, 7])
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_a_linear_product_through_cblas_equals_numpys_with_beta_adding_to_the_output(
    cblas: CblasProducts, rows: int, beta: float
) -> None:
    rng = np.random.default_rng(rows)
    a = rng.standard_normal((rows, 40), dtype=np.float32)
    wide = rng.standard_normal((24, 50), dtype=np.float32)
    w = wide[:, :40]  # a view with a longer row stride, read in place
    out = rng.standard_normal((rows, 24), dtype=np.float32)
    expected = a @ w.T + beta * out
    cblas.linear(a, w, out, beta)
    assert np.allclose(out, expected, atol=1e-4)


@pytest.mark.parametrize("rows", [1, 5])
def test_a_plain_product_through_cblas_equals_numpys(cblas: CblasProducts, rows: int) -> None:
    rng = np.random.default_rng(3)
    a = rng.standard_normal((rows, 33), dtype=np.float32)
    b = rng.standard_normal((33, 16), dtype=np.float32)
    out = np.empty((rows, 16), np.float32)
    cblas.matmul(a, b, out)
    numpy_out = np.empty_like(out)
    NumpyProducts().matmul(a, b, numpy_out)
    assert np.allclose(out, a @ b, atol=1e-4) and np.allclose(numpy_out, a @ b, atol=1e-6)


def test_a_matrix_blas_cannot_read_in_place_is_refused_not_misread(cblas: CblasProducts) -> None:
    a = np.ones((3, 8), np.float32)
    out = np.empty((3, 4), np.float32)
    with pytest.raises(ValueError, match="strides"):
        cblas.linear(a, np.ones((8, 4), np.float32).T, out, 0.0)  # column-major
    with pytest.raises(ValueError, match="float32"):
        cblas.linear(a.astype(np.float64), np.ones((4, 8), np.float32), out, 0.0)


def test_without_a_blas_library_the_products_are_numpys(tmp_path: Path) -> None:
    assert products_for(None).name == "numpy"
    assert products_for(tmp_path / "libmissing.so").name == "numpy"


def test_one_thread_holds_the_library_to_its_caller_and_gives_the_count_back_even_on_error(
    cblas: CblasProducts,
) -> None:
    get = cblas._get_threads
    assert get is not None
    before = get()
    with pytest.raises(RuntimeError, match="inside"), cblas.one_thread():
        assert get() == 1
        raise RuntimeError("inside")
    assert get() == before
