"""STFT and inverse STFT in PyTorch: thin wrappers around torch.stft / torch.istft.

Mirrors mlx_models/stft.py (same names and signatures) and is the reference the MLX
version is tested against. Conventions: periodic Hann window of length n_fft,
`center=True` with reflect padding, no normalisation, one-sided spectrum laid out as
(..., freq, frames) with freq = n_fft // 2 + 1; any leading batch shape (torch.stft itself
takes at most one batch dimension, so leading dimensions are flattened and restored).
"""
from __future__ import annotations

import torch


def hann_window(n_fft: int, device=None) -> torch.Tensor:
    """Periodic Hann window, torch.hann_window's default: 0.5 - 0.5 cos(2 pi n / n_fft)."""
    return torch.hann_window(n_fft, periodic=True, dtype=torch.float32, device=device)


def _window(n_fft: int, hop: int, window, like: torch.Tensor) -> torch.Tensor:
    if not 0 < hop <= n_fft:
        raise ValueError(f"hop must be in 1..n_fft={n_fft}, got {hop}")
    window = hann_window(n_fft, like.device) if window is None else window
    if tuple(window.shape) != (n_fft,):
        raise ValueError(f"window must have shape ({n_fft},), got {tuple(window.shape)}")
    return window.to(device=like.device, dtype=like.real.dtype)


def stft(x: torch.Tensor, n_fft: int, hop: int, window: torch.Tensor | None = None) -> torch.Tensor:
    """(..., time) real -> (..., n_fft // 2 + 1, frames) complex, frames = 1 + time // hop
    for even n_fft."""
    window = _window(n_fft, hop, window, x)
    *lead, length = x.shape
    spec = torch.stft(x.reshape(-1, length), n_fft, hop, window=window, center=True,
                      pad_mode="reflect", normalized=False, onesided=True, return_complex=True)
    return spec.reshape(*lead, *spec.shape[-2:])


def istft(spec: torch.Tensor, n_fft: int, hop: int, length: int,
          window: torch.Tensor | None = None) -> torch.Tensor:
    """(..., n_fft // 2 + 1, frames) complex -> (..., length) real."""
    window = _window(n_fft, hop, window, spec)
    *lead, n_freq, n_frames = spec.shape
    y = torch.istft(spec.reshape(-1, n_freq, n_frames), n_fft, hop, window=window, center=True,
                    normalized=False, onesided=True, length=length)
    return y.reshape(*lead, length)
