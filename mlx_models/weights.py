"""MLX module <-> canonical numpy weights. Layout transforms come from the manifest."""
from __future__ import annotations

import ml_dtypes
import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from shared.engine.checkpoint import check_weights
from shared.engine.layout import from_backend, to_backend
from shared.specs.base import ParamSpec


def to_numpy(array: mx.array) -> np.ndarray:
    if array.dtype == mx.bfloat16:  # numpy's bf16 comes from ml_dtypes; move the bits
        return np.array(array.view(mx.uint16)).view(ml_dtypes.bfloat16)
    return np.array(array)


def get_weights(model, manifest: list[ParamSpec]) -> dict[str, np.ndarray]:
    params = dict(tree_flatten(model.parameters()))
    return {p.name: from_backend(to_numpy(params[p.name]), p.kind, "mlx") for p in manifest}


def set_weights(model, manifest: list[ParamSpec], weights: dict[str, np.ndarray],
                source: str = "checkpoint") -> None:
    check_weights(weights, manifest, source)
    tree = [(p.name, mx.array(to_backend(weights[p.name], p.kind, "mlx"))) for p in manifest]
    model.update(tree_unflatten(tree))
    mx.eval(model.parameters())
