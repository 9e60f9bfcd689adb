from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from adapters import _blas

AVX512_CPU = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512cd avx512bw avx512dq avx512vl\n"
AVX2_CPU = "flags\t\t: fpu sse2 avx avx2 fma\n"


def test_no_library_is_found_where_none_is_installed(tmp_path: Path) -> None:
    assert _blas.find_openblas("x86_64", [str(tmp_path / "missing.so")]) is None
    assert _blas.find_openblas("riscv128") is None


def test_core_type_follows_the_cpu_flags() -> None:
    assert _blas.core_type(AVX512_CPU) == "SKYLAKEX"
    assert _blas.core_type(AVX2_CPU) == "HASWELL"
    assert _blas.core_type("flags\t: fpu sse2\n") is None


MATMUL = (
    "import sys, numpy as np\n"
    "from adapters._blas import load_openblas\n"
    "state = load_openblas(opt_out=sys.argv[2] == 'reference')\n"
    "import mlx.core as mx\n"
    "a = mx.random.normal((256, 384), key=mx.random.key(0))\n"
    "b = mx.random.normal((384, 512), key=mx.random.key(1))\n"
    "np.save(sys.argv[1], np.array(a @ b))\n"
    "print(state)\n"
    "print('libopenblas' in open('/proc/self/maps').read())\n"
    "print(load_openblas(opt_out=sys.argv[2] == 'reference') == state)\n"
)


def test_mlx_gives_the_same_matmul_with_openblas_loaded_in_process(tmp_path: Path) -> None:
    if sys.platform != "linux" or _blas.find_openblas() is None:
        pytest.skip(f"no OpenBLAS installed (apt-get install {_blas.APT_PACKAGE})")
    root = Path(__file__).resolve().parents[2]
    runs = {}
    for mode in ("reference", "auto"):
        out = subprocess.run(
            [sys.executable, "-c", MATMUL, str(tmp_path / f"{mode}.npy"), mode],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        runs[mode] = out.stdout.split("\n")
    assert runs["reference"][:3] == ["reference (opted out)", "False", "True"]
    assert runs["auto"][0].startswith("openblas (") and runs["auto"][1:3] == ["True", "True"]
    reference, fast = np.load(tmp_path / "reference.npy"), np.load(tmp_path / "auto.npy")
    np.testing.assert_allclose(fast, reference, rtol=1e-5, atol=1e-4)


def test_openblas_is_not_loaded_once_mlx_is_already_in_the_process(tmp_path: Path) -> None:
    code = "import mlx.core\nfrom adapters._blas import load_openblas\nprint(load_openblas())\n"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60, check=True)
    if sys.platform == "linux":
        assert out.stdout.strip() == "reference (MLX was loaded first)"
