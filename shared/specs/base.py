"""What every model family's spec provides: a parameter manifest.

A manifest lists every trainable parameter with its canonical name, canonical shape and
layout kind. Canonical layout is PyTorch's (what Hugging Face and most checkpoints use);
the layout kind tells `shared.engine.layout` how to turn it into a backend's native layout.
"""
from __future__ import annotations

from shared.errors import SpecError

from dataclasses import dataclass

import numpy as np

# Layout kinds. Only convolutions differ between MLX (channels-last) and torch.
LINEAR = "linear"                      # (out, in) on both backends
EMBEDDING = "embedding"                # (num, dim) on both backends
NORM = "norm"                          # (dim,) scale or bias
BIAS = "bias"                          # (dim,)
CONV1D = "conv1d"                      # torch (O, I, K)        mlx (O, K, I)
CONV2D = "conv2d"                      # torch (O, I, kH, kW)   mlx (O, kH, kW, I)
CONV_TRANSPOSE1D = "conv_transpose1d"  # torch (I, O, K)        mlx (O, K, I)
CONV_TRANSPOSE2D = "conv_transpose2d"  # torch (I, O, kH, kW)   mlx (O, kH, kW, I)
OTHER = "other"                        # any tensor stored identically on both sides

LAYOUT_KINDS = (LINEAR, EMBEDDING, NORM, BIAS, CONV1D, CONV2D,
                CONV_TRANSPOSE1D, CONV_TRANSPOSE2D, OTHER)


def check_int(name: str, value, minimum: int) -> None:
    """model.<name> must be an integer >= minimum (bools are not integers here)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise SpecError(f"model.{name} must be {what}, got {value!r}")


@dataclass(frozen=True)
class ParamSpec:
    name: str                # canonical dotted path, e.g. "layers.0.attention.q_proj.weight"
    shape: tuple[int, ...]   # canonical (torch) shape
    kind: str                # one of LAYOUT_KINDS

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


def manifest_dict(manifest: list[ParamSpec]) -> dict[str, ParamSpec]:
    return {p.name: p for p in manifest}


def count_params(manifest: list[ParamSpec]) -> int:
    return sum(p.numel for p in manifest)


def split_examples(batch, n_parts: int) -> list:
    """A numpy batch (an array, or a dict of arrays) in near-equal parts along axis 0."""
    if isinstance(batch, dict):
        columns = {k: np.array_split(v, n_parts) for k, v in batch.items()}
        return [{k: parts[i] for k, parts in columns.items()} for i in range(n_parts)]
    return np.array_split(batch, n_parts)


def torch_default_init(p: ParamSpec, rng: np.random.Generator) -> np.ndarray:
    """torch's default initial value of a parameter, float32: norm scales ones, biases
    zeros, weights U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming-uniform with a=sqrt(5)),
    fan_in = prod(shape[1:]) of the canonical shape -- the dimension torch itself uses
    (for a transposed conv, out_channels * kernel)."""
    if p.kind == NORM:
        return np.ones(p.shape, np.float32)
    if p.kind == BIAS:
        return np.zeros(p.shape, np.float32)
    bound = 1.0 / np.sqrt(int(np.prod(p.shape[1:])))
    return rng.uniform(-bound, bound, p.shape).astype(np.float32)
