"""Canonical (torch) layout <-> MLX layout, driven by the manifest's layout kind.

Never infer a transpose from a shape: a square conv kernel or a 1x1 conv would be
silently mangled. The kind says what the tensor is.
"""
from __future__ import annotations

import numpy as np

from shared.specs.base import (CONV1D, CONV2D, CONV_TRANSPOSE1D, CONV_TRANSPOSE2D,
                               LAYOUT_KINDS, ParamSpec)

# Axis permutations taking a canonical array to MLX's layout.
_TO_MLX = {
    CONV1D: (0, 2, 1),               # (O, I, K) -> (O, K, I)
    CONV2D: (0, 2, 3, 1),            # (O, I, kH, kW) -> (O, kH, kW, I)
    CONV_TRANSPOSE1D: (1, 2, 0),     # (I, O, K) -> (O, K, I)
    CONV_TRANSPOSE2D: (1, 2, 3, 0),  # (I, O, kH, kW) -> (O, kH, kW, I)
}
BACKENDS = ("mlx", "torch")


def _check(kind: str, backend: str) -> None:
    if kind not in LAYOUT_KINDS:
        raise ValueError(f"unknown layout kind {kind!r}; expected one of {LAYOUT_KINDS}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")


def to_backend(array: np.ndarray, kind: str, backend: str) -> np.ndarray:
    """Canonical array -> the backend's native layout."""
    _check(kind, backend)
    if backend == "mlx" and kind in _TO_MLX:
        return np.ascontiguousarray(np.transpose(array, _TO_MLX[kind]))
    return array


def from_backend(array: np.ndarray, kind: str, backend: str) -> np.ndarray:
    """The backend's native layout -> canonical array."""
    _check(kind, backend)
    if backend == "mlx" and kind in _TO_MLX:
        return np.ascontiguousarray(np.transpose(array, np.argsort(_TO_MLX[kind])))
    return array


def backend_shape(param: ParamSpec, backend: str) -> tuple[int, ...]:
    """The shape a parameter has inside the backend's module tree."""
    _check(param.kind, backend)
    if backend == "mlx" and param.kind in _TO_MLX:
        return tuple(param.shape[i] for i in _TO_MLX[param.kind])
    return param.shape
