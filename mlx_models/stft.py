"""STFT and inverse STFT in MLX, matching torch.stft / torch.istft.

Mirrors torch_models/stft.py (same names and signatures). Conventions, all torch's:
periodic Hann window of length n_fft, `center=True` with reflect padding of n_fft // 2 on
both sides, no normalisation, one-sided spectrum laid out as (..., freq, frames) with
freq = n_fft // 2 + 1. Any leading batch shape; any hop <= n_fft, odd sizes included.

The transforms are MLX's own mx.fft.stft / mx.fft.istft (mlx >= 0.32.4), built from
differentiable ops, so gradients flow through both directions. This module adds what
they leave out and torch checks: hop <= n_fft, a window of exactly n_fft samples (MLX
would centre a shorter one), a signal longer than the reflect padding, and NOLA in
istft (MLX divides by max(envelope, 1e-8) instead of refusing).
tests/parity/test_stft.py checks values, perfect reconstruction and gradients against
torch.
"""
from __future__ import annotations

import mlx.core as mx
import numpy as np


def hann_window(n_fft: int) -> mx.array:
    """Periodic Hann window, torch.hann_window's default: 0.5 - 0.5 cos(2 pi n / n_fft)."""
    return mx.array(_hann(n_fft))


def _hann(n_fft: int) -> np.ndarray:
    n = np.arange(n_fft, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)).astype(np.float32)


def _window(n_fft: int, hop: int, window) -> np.ndarray:
    """The analysis/synthesis window as a numpy constant (a window is a setting, not a
    parameter: it gets no gradient, and istft's envelope can be checked without running
    the graph, so both functions also work under mx.compile)."""
    if not 0 < hop <= n_fft:
        raise ValueError(f"hop must be in 1..n_fft={n_fft}, got {hop}")
    window = _hann(n_fft) if window is None else np.asarray(window, dtype=np.float32)
    if window.shape != (n_fft,):
        raise ValueError(f"window must have shape ({n_fft},), got {tuple(window.shape)}")
    return window


def stft(x: mx.array, n_fft: int, hop: int, window: mx.array | None = None) -> mx.array:
    """(..., time) real -> (..., n_fft // 2 + 1, frames) complex64, frames = 1 + time // hop
    for even n_fft (the torch.stft(center=True, return_complex=True) layout)."""
    window = mx.array(_window(n_fft, hop, window))
    length = x.shape[-1]
    pad = n_fft // 2
    if length <= pad:  # torch's reflect padding has the same limit
        raise ValueError(f"signal of {length} samples is too short for n_fft={n_fft}: "
                         f"reflect padding needs more than n_fft // 2 = {pad} samples")
    return mx.fft.stft(x, n_fft=n_fft, hop_length=hop, window=window, center=True,
                       pad_mode="reflect", norm="backward", onesided=True)


def _envelope(window: np.ndarray, hop: int, n_frames: int) -> np.ndarray:
    """Overlap-add of the squared window over n_frames frames (float64, numpy)."""
    env = np.zeros((n_frames - 1) * hop + window.size)
    positions = np.arange(n_frames)[:, None] * hop + np.arange(window.size)
    np.add.at(env, positions, np.broadcast_to(window.astype(np.float64) ** 2, positions.shape))
    return env


def istft(spec: mx.array, n_fft: int, hop: int, length: int,
          window: mx.array | None = None) -> mx.array:
    """(..., n_fft // 2 + 1, frames) complex -> (..., length) real: windowed overlap-add
    divided by the overlap-added squared window, as torch.istft(center=True) does. Samples
    past the last frame (a `length` longer than the frames cover) are zeros, as in torch."""
    window = _window(n_fft, hop, window)
    n_freq, n_frames = spec.shape[-2:]
    if n_freq != n_fft // 2 + 1:
        raise ValueError(f"spectrum has {n_freq} bins, n_fft={n_fft} needs {n_fft // 2 + 1}")
    # torch's NOLA check, same bound, on the part of the envelope the output keeps. The
    # envelope depends only on the window and sizes, so it is checked without the graph.
    start = n_fft // 2
    envelope = _envelope(window, hop, n_frames)[start:start + length]
    if envelope.size and envelope.min() < 1e-11:
        raise ValueError(f"window overlap-add is zero somewhere (n_fft={n_fft}, hop={hop}): "
                         f"the window does not satisfy NOLA, the signal cannot be recovered")
    return mx.fft.istft(spec, n_fft=n_fft, hop_length=hop, window=mx.array(window),
                        center=True, norm="backward", onesided=True, length=length)
