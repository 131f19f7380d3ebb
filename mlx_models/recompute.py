"""Activation checkpointing for MLX that replays dropout exactly.

`mx.checkpoint` recomputes a function in the backward pass. Random draws inside it
(dropout masks) would come out different the second time, and the gradients would
silently belong to another network. Here every checkpointed call gets a random key as
one of its inputs, and `Dropout` inside it splits its masks off that key in call order,
so the recomputation draws exactly the masks of the forward pass. Layers run without
checkpointing draw their key the same way, so switching checkpointing on changes memory
and time, never the masks. (torch's checkpoint saves and restores the RNG state instead.)
"""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

# Keys of the run_layer calls being run (innermost last); empty outside them.
_keys: list[mx.array] = []


class Dropout(nn.Module):
    """nn.Dropout, except that inside `run_layer` its masks come from the layer's key."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.keep = 1.0 - p

    def __call__(self, x):
        if not self.training or self.keep == 1.0:
            return x
        if _keys:
            _keys[-1], key = mx.random.split(_keys[-1])
            mask = mx.random.bernoulli(self.keep, x.shape, key=key)
        else:
            mask = mx.random.bernoulli(self.keep, x.shape)
        return (mask * x) * (1 / self.keep)


def run_layer(layer: nn.Module, *inputs, call=None, checkpoint: bool = False):
    """`(call or layer)(*inputs)` in training, its dropout masks drawn from a key of its
    own. With checkpoint=True only the inputs (and `layer`'s parameters, whose gradients
    flow) are kept for the backward pass, which recomputes the rest with the same masks;
    so checkpointing on or off trains the same network."""
    call = call or layer
    if not layer.training:
        return call(*inputs)
    # Drawn once, replayed by a recomputation; nothing differentiates through a key.
    key = mx.stop_gradient(mx.random.randint(0, 2**31 - 1, (2,)).astype(mx.uint32))

    def run(params, key, *inputs):
        if params is not None:
            layer.update(params)
        _keys.append(mx.stop_gradient(key))
        try:
            return call(*inputs)
        finally:
            _keys.pop()
    if not checkpoint:
        return run(None, key, *inputs)
    return mx.checkpoint(run)(layer.trainable_parameters(), key, *inputs)
