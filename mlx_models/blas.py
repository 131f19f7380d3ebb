"""Give MLX on Linux an optimized BLAS.

The Linux `mlx[cpu]` wheel links netlib's reference BLAS (about 5 GFLOP/s for sgemm on
this class of machine). Loading an OpenBLAS with RTLD_GLOBAL *before* mlx.core puts its
`cblas_sgemm` first in the global symbol scope, so MLX's matmuls resolve to it (about
300 GFLOP/s) -- no LD_PRELOAD needed. This must run before the first `import mlx.core`,
which is why mlx_models/__init__.py calls it.

WORKBENCH_BLAS=/path/to/libblas.so picks a library; WORKBENCH_BLAS=reference keeps the
wheel's own. On macOS MLX uses Accelerate and Metal; nothing to do.

A process that uses torch too should import torch before mlx_models: the global symbols
would otherwise also take torch's BLAS calls away from its MKL (3-4x slower matmuls; the
results are the same). The torch entry points never import mlx_models.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import warnings
from pathlib import Path

CANDIDATES = [
    # Debian/Ubuntu: apt install libopenblas0-pthread (or -openmp)
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/openblas-openmp/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-openmp/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",          # Fedora, RHEL
    "/usr/lib/libopenblas.so.0",            # Arch
]

# What is in use, for the bench and the logs: a path, "reference" or "accelerate".
BLAS_IN_USE = "accelerate" if sys.platform == "darwin" else "reference"


def _find() -> str | None:
    for path in CANDIDATES:
        if Path(path).is_file():
            return path
    return ctypes.util.find_library("openblas")


def use_optimized_blas() -> str:
    global BLAS_IN_USE
    if not sys.platform.startswith("linux") or BLAS_IN_USE != "reference":
        return BLAS_IN_USE
    if "mlx.core" in sys.modules:
        warnings.warn("mlx.core was imported before mlx_models, so MLX keeps the slow "
                      "reference BLAS; import mlx_models first", stacklevel=3)
        return BLAS_IN_USE
    choice = os.environ.get("WORKBENCH_BLAS", "")
    if choice == "reference":
        return BLAS_IN_USE
    path = choice or _find()
    if path is None:
        warnings.warn("no OpenBLAS found: MLX will use the reference BLAS (~50x slower "
                      "matmuls). Install it with: apt install libopenblas0-pthread "
                      "(or set WORKBENCH_BLAS=/path/to/libopenblas.so)", stacklevel=3)
        return BLAS_IN_USE
    try:
        lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError as e:
        warnings.warn(f"could not load {path} ({e}); MLX keeps the reference BLAS", stacklevel=3)
        return BLAS_IN_USE
    if not hasattr(lib, "cblas_sgemm"):
        warnings.warn(f"{path} has no cblas_sgemm: not a BLAS; MLX keeps the reference BLAS",
                      stacklevel=3)
        return BLAS_IN_USE
    BLAS_IN_USE = os.path.realpath(path)
    return BLAS_IN_USE


def openblas():
    """The OpenBLAS loaded for MLX (a ctypes handle; loading again returns the same
    library), or None when MLX uses Accelerate or the reference BLAS."""
    if BLAS_IN_USE in ("reference", "accelerate"):
        return None
    lib = ctypes.CDLL(BLAS_IN_USE)
    return lib if hasattr(lib, "openblas_get_config") else None


def set_blas_threads(n: int) -> None:
    """Threads of MLX's BLAS (OpenBLAS only; MLX's other CPU ops use one per stream).
    mlx-data's loader threads also set it (to 1 while they work, then back), through the
    same global symbol."""
    lib = openblas()
    if lib is not None:
        lib.openblas_set_num_threads(int(n))


def blas_thread_count() -> int | None:
    lib = openblas()
    return None if lib is None else lib.openblas_get_num_threads()
