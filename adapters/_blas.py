"""An optimised BLAS for MLX's CPU backend, loaded in-process before MLX.

MLX's Linux CPU wheel bundles the reference netlib BLAS: a BERT forward pass on
it is tens of times slower than on OpenBLAS, with the same results. Debian's
`libopenblas0-pthread` provides an OpenBLAS whose cblas_* symbols win when the
library is already in the process's global symbol scope as MLX is loaded —
what LD_PRELOAD does, done here with dlopen(RTLD_GLOBAL) on the MLX owner
thread right before it imports MLX, so no re-exec and no start-up cost.

OpenBLAS picks its kernels from the CPU model; on virtual CPUs that report a
generic model it falls back to slow generic kernels, so OPENBLAS_CORETYPE is
set from the CPU's feature flags unless the environment already sets it.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

APT_PACKAGE = "libopenblas0-pthread"

_LIBRARY_PATTERNS = (
    "/usr/lib/{triplet}/openblas-pthread/libopenblas.so.0",
    "/usr/lib/{triplet}/libopenblas.so.0",
    "/usr/lib/{triplet}/openblas-openmp/libopenblas.so.0",
    "/usr/lib/{triplet}/openblas-serial/libopenblas.so.0",
)
_TRIPLETS = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu", "arm64": "aarch64-linux-gnu"}
_AVX512 = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}


def find_openblas(machine: str | None = None, candidates: Sequence[str] | None = None) -> Path | None:
    """The first OpenBLAS shared library at Debian's usual paths."""
    triplet = _TRIPLETS.get(machine or platform.machine())
    if candidates is None:
        if triplet is None:
            return None
        candidates = [pattern.format(triplet=triplet) for pattern in _LIBRARY_PATTERNS]
    for candidate in candidates:
        path = Path(candidate)
        if path.is_file():
            return path
    return None


def core_type(cpuinfo: str) -> str | None:
    """The OpenBLAS core matching an x86-64 CPU's flags (SkylakeX for AVX-512, Haswell for AVX2)."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            break
    if flags >= _AVX512:
        return "SKYLAKEX"
    if flags >= {"avx2", "fma"}:
        return "HASWELL"
    return None


def _read_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


_lock = threading.Lock()
_state: str | None = None
_loaded: Path | None = None  # the OpenBLAS put in front of MLX's BLAS, once it is


def load_openblas(*, opt_out: bool = False, system: str = sys.platform) -> str:
    """Put OpenBLAS in front of MLX's bundled BLAS (once per process); says what MLX will use.

    Must run before `mlx` is first imported: symbols bind when MLX's library loads.
    """
    global _state
    with _lock:
        if _state is None:
            _state = _load(opt_out, system)
        return _state


def _load(opt_out: bool, system: str) -> str:
    if opt_out:
        return "reference (opted out)"
    if not system.startswith("linux"):
        return "platform default"
    if "mlx.core" in sys.modules:
        return "reference (MLX was loaded first)"
    lib = find_openblas()
    if lib is None:
        return f"reference (install {APT_PACKAGE} for ~20x faster CPU inference)"
    if not os.environ.get("OPENBLAS_CORETYPE") and platform.machine() == "x86_64":
        core = core_type(_read_cpuinfo())
        if core is not None:
            os.environ["OPENBLAS_CORETYPE"] = core  # read by OpenBLAS when it initialises, just below
    try:
        ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        return f"reference (OpenBLAS failed to load: {exc})"
    global _loaded
    _loaded = lib
    return f"openblas ({lib})"


def loaded_openblas() -> Path | None:
    """The OpenBLAS library load_openblas() put in front of MLX's BLAS, if it did."""
    return _loaded
