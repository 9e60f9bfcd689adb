"""Whether to re-exec with an optimised BLAS under MLX's CPU backend.

MLX's Linux CPU wheel bundles the reference netlib BLAS: a BERT forward pass on it is tens of times
slower than on OpenBLAS, with the same results. Debian's `libopenblas0-pthread` package provides an
OpenBLAS whose cblas_* symbols take precedence when preloaded, which must happen before the process
starts — hence a re-exec decided here, before anything heavy is imported.

OpenBLAS picks its kernels from the CPU model; on virtual CPUs that report a generic model it falls
back to slow generic kernels, so OPENBLAS_CORETYPE is set from the CPU's feature flags unless the
environment already sets it. `MODEL_GATEWAY_BLAS=reference` opts out.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

OPT_OUT_VAR = "MODEL_GATEWAY_BLAS"
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


def preload_env(
    environ: Mapping[str, str],
    *,
    system: str = sys.platform,
    library: Path | None = None,
    cpuinfo: str | None = None,
) -> dict[str, str] | None:
    """The environment to re-exec with so MLX uses OpenBLAS; None when no re-exec is wanted.

    None when: not Linux, the user opted out (MODEL_GATEWAY_BLAS=reference), OpenBLAS is already
    preloaded (which also stops a re-exec loop), or no OpenBLAS library is installed.
    """
    if not system.startswith("linux"):
        return None
    if environ.get(OPT_OUT_VAR, "").strip().lower() in ("reference", "off", "none", "0"):
        return None
    preloaded = environ.get("LD_PRELOAD", "")
    if "libopenblas" in preloaded:
        return None
    lib = library or find_openblas()
    if lib is None:
        return None
    env = dict(environ)
    env["LD_PRELOAD"] = f"{lib}:{preloaded}" if preloaded else str(lib)
    if not environ.get("OPENBLAS_CORETYPE") and platform.machine() == "x86_64":
        core = core_type(_read_cpuinfo() if cpuinfo is None else cpuinfo)
        if core is not None:
            env["OPENBLAS_CORETYPE"] = core
    return env
