from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from server import blas

AVX512_CPU = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512cd avx512bw avx512dq avx512vl\n"
AVX2_CPU = "flags\t\t: fpu sse2 avx avx2 fma\n"


@pytest.fixture
def lib(tmp_path: Path) -> Path:
    path = tmp_path / "libopenblas.so.0"
    path.write_bytes(b"")
    return path


def test_linux_with_openblas_gets_a_preload_and_a_core_type(lib: Path) -> None:
    env = blas.preload_env({"HOME": "/h"}, system="linux", library=lib, cpuinfo=AVX512_CPU)
    assert env is not None and env["LD_PRELOAD"] == str(lib) and env["HOME"] == "/h"
    if blas.platform.machine() == "x86_64":
        assert env["OPENBLAS_CORETYPE"] == "SKYLAKEX"


def test_an_existing_preload_is_kept_and_a_chosen_core_type_is_respected(lib: Path) -> None:
    env = blas.preload_env(
        {"LD_PRELOAD": "/x/libfoo.so", "OPENBLAS_CORETYPE": "Haswell"}, system="linux", library=lib, cpuinfo=AVX512_CPU
    )
    assert env is not None
    assert env["LD_PRELOAD"] == f"{lib}:/x/libfoo.so" and env["OPENBLAS_CORETYPE"] == "Haswell"


@pytest.mark.parametrize(
    ("environ", "system"),
    [
        ({"MODEL_GATEWAY_BLAS": "reference"}, "linux"),
        ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libopenblas.so.0"}, "linux"),
        ({}, "darwin"),
    ],
)
def test_no_reexec_when_opted_out_already_preloaded_or_not_linux(
    lib: Path, environ: dict[str, str], system: str
) -> None:
    assert blas.preload_env(environ, system=system, library=lib, cpuinfo=AVX512_CPU) is None


def test_no_reexec_without_an_openblas_library(tmp_path: Path) -> None:
    assert blas.find_openblas("x86_64", [str(tmp_path / "missing.so")]) is None
    assert blas.find_openblas("riscv128") is None


def test_core_type_follows_the_cpu_flags() -> None:
    assert blas.core_type(AVX512_CPU) == "SKYLAKEX"
    assert blas.core_type(AVX2_CPU) == "HASWELL"
    assert blas.core_type("flags\t: fpu sse2\n") is None


def test_mlx_gives_the_same_matmul_under_the_preloaded_openblas(tmp_path: Path) -> None:
    env = blas.preload_env({"PATH": "/usr/bin:/bin"}, system=sys.platform)
    if env is None:
        pytest.skip(f"no OpenBLAS to preload (apt-get install {blas.APT_PACKAGE})")
    code = (
        "import sys, numpy as np, mlx.core as mx\n"
        "a = mx.random.normal((256, 384), key=mx.random.key(0))\n"
        "b = mx.random.normal((384, 512), key=mx.random.key(1))\n"
        "np.save(sys.argv[1], np.array(a @ b))\n"
        "print('libopenblas' in open('/proc/self/maps').read())\n"
    )
    runs = {}
    for name, run_env in (("reference", {"PATH": "/usr/bin:/bin"}), ("openblas", env)):
        out = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / f"{name}.npy")],
            env=run_env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        runs[name] = out.stdout.strip() == "True"
    assert runs == {"reference": False, "openblas": True}
    import numpy as np

    diff = np.abs(np.load(tmp_path / "reference.npy") - np.load(tmp_path / "openblas.npy")).max()
    assert diff < 1e-3  # float32 sums over 384 terms in a different order
