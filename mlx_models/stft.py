"""STFT and inverse STFT in MLX, matching torch.stft / torch.istft.

Mirrors torch_models/stft.py (same names and signatures). Conventions, all torch's:
periodic Hann window of length n_fft, `center=True` with reflect padding of n_fft // 2 on
both sides, no normalisation, one-sided spectrum laid out as (..., freq, frames) with
freq = n_fft // 2 + 1. Any leading batch shape; any hop <= n_fft, odd sizes included.

Built from differentiable MLX ops only (pad, gather, rfft/irfft, pad-and-add), so
gradients flow through both directions; tests/parity/test_stft.py checks values, perfect
reconstruction and gradients against torch.
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
    *lead, length = x.shape
    pad = n_fft // 2
    if length <= pad:  # torch's reflect padding has the same limit
        raise ValueError(f"signal of {length} samples is too short for n_fft={n_fft}: "
                         f"reflect padding needs more than n_fft // 2 = {pad} samples")
    x = x.reshape(-1, length)
    x = mx.pad(x, [(0, 0), (pad, pad)], mode="reflect")  # numpy 'reflect' = torch 'reflect'
    n_frames = 1 + (x.shape[-1] - n_fft) // hop
    # Frames by index arithmetic: one gather of (frames, n_fft) positions. Its gradient is
    # a scatter-add, which is exactly the overlap-add the backward pass needs.
    starts = mx.arange(n_frames)[:, None] * hop
    frames = x[:, starts + mx.arange(n_fft)[None, :]] * window      # (B, frames, n_fft)
    spec = mx.fft.rfft(frames, axis=-1)                                # (B, frames, freq)
    return spec.transpose(0, 2, 1).reshape(*lead, n_fft // 2 + 1, n_frames)


def overlap_add(frames: mx.array, hop: int) -> mx.array:
    """(B, frames, n) -> (B, (frames - 1) * hop + n): frame t added at sample t * hop.

    Written as pads and adds rather than a scatter: cut each frame (zero-padded to R * hop)
    into R hop-sized pieces; piece r of frame t lands in output block t + r, so the output
    is the sum over r of piece r shifted by r blocks."""
    B, n_frames, n = frames.shape
    R = -(-n // hop)
    pieces = mx.pad(frames, [(0, 0), (0, 0), (0, R * hop - n)]).reshape(B, n_frames, R, hop)
    out = sum(mx.pad(pieces[:, :, r], [(0, 0), (r, R - 1 - r), (0, 0)]) for r in range(R))
    return out.reshape(B, -1)[:, :(n_frames - 1) * hop + n]


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
    *lead, n_freq, n_frames = spec.shape
    if n_freq != n_fft // 2 + 1:
        raise ValueError(f"spectrum has {n_freq} bins, n_fft={n_fft} needs {n_fft // 2 + 1}")
    spec = spec.reshape(-1, n_freq, n_frames).transpose(0, 2, 1)     # (B, frames, freq)
    frames = mx.fft.irfft(spec, n=n_fft, axis=-1) * mx.array(window)  # (B, frames, n_fft)
    y = overlap_add(frames, hop)
    start = n_fft // 2
    stop = min(start + length, y.shape[-1])
    # The squared-window envelope depends only on the window and sizes, never on the data.
    envelope = _envelope(window, hop, n_frames)[start:stop]
    if envelope.size and envelope.min() < 1e-11:  # torch's NOLA check, same bound
        raise ValueError(f"window overlap-add is zero somewhere (n_fft={n_fft}, hop={hop}): "
                         f"the window does not satisfy NOLA, the signal cannot be recovered")
    y = y[:, start:stop] / mx.array(envelope.astype(np.float32))
    if stop - start < length:
        y = mx.pad(y, [(0, 0), (0, length - (stop - start))])
    return y.reshape(*lead, length)
